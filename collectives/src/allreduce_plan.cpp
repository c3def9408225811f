#include "allreduce_plan.hpp"

#include <string>

#include "lazy_require.hpp"

namespace frugal::detail {

AllreducePlan plan_allreduce(const Communicator& comm, std::size_t bytes, DType dtype,
                             const AllreduceOptions& options) {
  require(bytes % size_of(dtype) == 0, "data", [&] {
    return "byte size " + std::to_string(bytes) + " is not a whole number of " +
           std::string(to_string(dtype)) + " elements";
  });
  require(options.op != ReduceOp::Average || dtype != DType::Int32, "op",
          "average is defined for floating types only");
  const compression::Method method = options.compression.method;
  AllreducePlan plan;
  plan.compressed = method != compression::Method::None;
  const std::size_t count = bytes / size_of(dtype);
  if (plan.compressed) {
    require(dtype == DType::Float32, "dtype", "compressed allreduce takes float32 only");
    plan.compressor = compression::make_compressor(options.compression);
  }
  plan.algorithm = options.algorithm;
  if (plan.algorithm == AllreduceAlgorithm::Auto) {
    plan.algorithm = plan.compressed ? choose_allreduce_algorithm(options, count, comm.size())
                                     : choose_allreduce_algorithm(bytes, comm.size());
  }
  require(algorithm_supports(plan.algorithm, method), "algorithm", [&] {
    const std::string name(to_string(plan.algorithm));
    if (!plan.compressed) {
      return name + " needs a compression method; dense allreduce runs " +
             supported_algorithms(method) + " (or auto)";
    }
    return name + " cannot run " + std::string(compression::to_string(method)) + "; use " +
           supported_algorithms(method) + " (or auto)";
  });
  if (plan.compressed) {
    require(!options.error_feedback || options.state != nullptr, "state",
            "error feedback needs an AllreduceState that lives across calls (or set "
            "error_feedback = false)");
  }
  const NonFiniteAction action = options.non_finite;
  require(action >= NonFiniteAction::Default && action <= NonFiniteAction::Zero, "non_finite",
          [&] { return "unknown NonFiniteAction " + std::to_string(static_cast<int>(action)); });
  plan.divisor = options.op == ReduceOp::Average ? comm.size() : 1;
  plan.terms.kind = CollectiveKind::Allreduce;
  plan.terms.count = count;
  plan.terms.dtype = dtype;
  plan.terms.op = options.op;
  plan.terms.algorithm = plan.algorithm;
  plan.terms.action = action;
  return plan;
}

}  // namespace frugal::detail
