#include "allreduce_plan.hpp"

#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>

#include "compressed_segments.hpp"
#include "lazy_require.hpp"

namespace frugal::detail {

namespace {

// The compression terms as used: a bucket of 0 is the method's default, and only the
// parameters the method reads count (a QSGD run does not disagree over an unused density).
CompressionTerms compression_terms(const AllreduceOptions& options,
                                   const compression::Compressor& compressor, std::size_t count) {
  using compression::Method;
  const compression::CompressionConfig& c = options.compression;
  CompressionTerms t;
  t.method = static_cast<std::uint8_t>(c.method);
  switch (c.method) {
    case Method::TopK:
      t.variant = static_cast<std::uint8_t>(c.values);
      t.selection = static_cast<std::uint8_t>(c.selection);
      t.k = compressor.k_for(count);
      t.topk_scope = static_cast<std::uint8_t>(c.topk_scope);
      t.gtopk = c.gtopk ? 1 : 0;
      // Sampled payloads vary within the tolerance and receivers size their buffers by it.
      if (c.selection == compression::TopKSelection::Sampled) {
        std::memcpy(&t.tolerance_bits, &c.tolerance, sizeof t.tolerance_bits);
      }
      break;
    case Method::OneBit:
      t.variant = static_cast<std::uint8_t>(c.scaling);
      t.bucket = static_cast<std::uint32_t>(c.bucket ? c.bucket : compression::kDefaultOneBitChunk);
      break;
    case Method::Qsgd:
      t.variant = static_cast<std::uint8_t>(c.norm);
      t.bits = static_cast<std::uint32_t>(c.bits);
      t.bucket = static_cast<std::uint32_t>(c.bucket ? c.bucket : compression::kDefaultQsgdBucket);
      break;
    case Method::Ternary:
      t.variant = c.clip_sigma > 0.0f ? 1 : 0;
      t.bucket =
          static_cast<std::uint32_t>(c.bucket ? c.bucket : compression::kDefaultTernaryBucket);
      std::memcpy(&t.clip_bits, &c.clip_sigma, sizeof t.clip_bits);
      break;
    case Method::Bf16:
      t.variant = c.stochastic_rounding ? 1 : 0;
      break;
    case Method::None:
    case Method::Fp16:
      break;
  }
  t.error_feedback = options.error_feedback ? 1 : 0;
  // The policy decides whether a rank scans its input before the agreement (checks_early):
  // ranks that differ there would read the agreement's NaN/Inf flags differently.
  t.policy = static_cast<std::uint8_t>(c.non_finite);
  t.seed = options.seed;
  t.segments = segments_digest(options.segments);
  return t;
}

// Top-k and 1-bit drop most of the gradient at every step: without error feedback that mass is
// lost for good and training converges to a worse model (or not at all). Allowed, since it is
// what an ablation measures, but said once per process and method, not once per bucket and step.
void warn_once_without_feedback(compression::Method method) {
  using compression::Method;
  const char* why = nullptr;
  if (method == Method::TopK) {
    why = "top-k keeps k of n elements and the rest is lost every step";
  } else if (method == Method::OneBit) {
    why = "1-bit keeps signs and one scale per chunk, a biased estimate";
  }
  if (why == nullptr) return;
  static std::array<std::atomic<bool>, 256> warned{};
  if (warned[static_cast<std::uint8_t>(method)].exchange(true)) return;
  std::fprintf(stderr,
               "frugal: warning: %s without error feedback: %s; without the residual that mass "
               "never reaches the model (set error_feedback = true unless this is deliberate)\n",
               std::string(compression::to_string(method)).c_str(), why);
}

}  // namespace

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
  check_segments(options.segments, count);
  if (plan.compressed && options.compression.topk_scope == compression::TopKScope::PerTensor &&
      options.compression.method == compression::Method::TopK && splits(options.segments)) {
    // Receivers take the merged payload of the per-tensor selections as one of k = their sum.
    compression::CompressionConfig merged = options.compression;
    merged.k = 0;
    for (const std::size_t k : per_tensor_k(options.segments, plan.compressor->k_for(count))) {
      merged.k += k;
    }
    plan.compressor = compression::make_compressor(merged);
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
  if (options.compression.gtopk) {
    require(method == compression::Method::TopK, "gtopk", "applies to top-k only");
    require(plan.algorithm == AllreduceAlgorithm::SparseRecursiveDoubling, "gtopk", [&] {
      return "cuts the sum at every step of sparse_rd; algorithm " +
             std::string(to_string(plan.algorithm)) + " cannot (use sparse_rd or auto)";
    });
  }
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
  if (plan.compressed) plan.terms.compression = compression_terms(options, *plan.compressor, count);
  if (plan.compressed && !options.error_feedback) warn_once_without_feedback(method);
  return plan;
}

}  // namespace frugal::detail
