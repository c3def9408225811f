#include "frugal/collectives/allreduce.hpp"

#include <string>

#include "../patterns/recursive_doubling.hpp"
#include "algorithms.hpp"
#include "collective_context.hpp"
#include "compressed_allreduce.hpp"
#include "reduce_kernels.hpp"

namespace frugal {

std::string_view to_string(AllreduceAlgorithm algorithm) noexcept {
  switch (algorithm) {
    case AllreduceAlgorithm::Auto:
      return "auto";
    case AllreduceAlgorithm::Ring:
      return "ring";
    case AllreduceAlgorithm::RecursiveDoubling:
      return "recursive_doubling";
    case AllreduceAlgorithm::Rabenseifner:
      return "rabenseifner";
    case AllreduceAlgorithm::TwoPhase:
      return "two_phase";
    case AllreduceAlgorithm::SparseAllgather:
      return "sparse_allgather";
    case AllreduceAlgorithm::SparseRecursiveDoubling:
      return "sparse_rd";
  }
  return "unknown";
}

std::optional<AllreduceAlgorithm> parse_allreduce_algorithm(std::string_view text) noexcept {
  if (text == "auto") return AllreduceAlgorithm::Auto;
  if (text == "ring") return AllreduceAlgorithm::Ring;
  if (text == "recursive_doubling" || text == "rd") return AllreduceAlgorithm::RecursiveDoubling;
  if (text == "rabenseifner") return AllreduceAlgorithm::Rabenseifner;
  if (text == "two_phase") return AllreduceAlgorithm::TwoPhase;
  if (text == "sparse_allgather") return AllreduceAlgorithm::SparseAllgather;
  if (text == "sparse_rd" || text == "sparse_recursive_doubling") {
    return AllreduceAlgorithm::SparseRecursiveDoubling;
  }
  return std::nullopt;
}

AllreduceAlgorithm choose_allreduce_algorithm(std::size_t bytes, int ranks) noexcept {
  // Latency-bound messages want the fewest rounds; bandwidth-bound ones the ring, which moves
  // the minimum 2(P-1)/P of the data per rank and pipelines the reduction with the transfer.
  // Rabenseifner sits between, but only where P is a power of two: folding the extra ranks
  // costs a full extra transfer that the ring does not pay.
  if (ranks <= 1 || bytes <= kRecursiveDoublingMaxBytes) {
    return AllreduceAlgorithm::RecursiveDoubling;
  }
  if (patterns::is_pow2(ranks) && bytes <= kRabenseifnerMaxBytes) {
    return AllreduceAlgorithm::Rabenseifner;
  }
  return AllreduceAlgorithm::Ring;
}

void allreduce(Communicator& comm, std::span<std::byte> data, DType dtype,
               const AllreduceOptions& options) {
  require(data.size() % size_of(dtype) == 0, "data",
          "byte size " + std::to_string(data.size()) + " is not a whole number of " +
              std::string(to_string(dtype)) + " elements");
  require(options.op != ReduceOp::Average || dtype != DType::Int32, "op",
          "average is defined for floating types only");
  if (options.compression.method != compression::Method::None) {
    require(dtype == DType::Float32, "dtype", "compressed allreduce takes float32 only");
    const std::span<float> values(reinterpret_cast<float*>(data.data()), data.size() / 4);
    detail::compressed_allreduce(comm, values, options);
    return;
  }
  const int divisor = options.op == ReduceOp::Average ? comm.size() : 1;
  AllreduceAlgorithm algorithm = options.algorithm;
  if (algorithm == AllreduceAlgorithm::Auto) {
    algorithm = choose_allreduce_algorithm(data.size(), comm.size());
  }
  require(algorithm == AllreduceAlgorithm::Ring ||
              algorithm == AllreduceAlgorithm::RecursiveDoubling ||
              algorithm == AllreduceAlgorithm::Rabenseifner,
          "algorithm",
          std::string(to_string(algorithm)) +
              " needs a compression method; dense allreduce runs "
              "ring, recursive_doubling or rabenseifner");
  const auto start = Clock::now();
  detail::run_collective(comm, options, [&](detail::CollectiveContext& ctx) {
    switch (ctx.size() == 1 ? AllreduceAlgorithm::Auto : algorithm) {
      case AllreduceAlgorithm::Auto:  // one rank: nothing to exchange
        if (divisor > 1) detail::divide(data, dtype, divisor);
        break;
      case AllreduceAlgorithm::TwoPhase:
      case AllreduceAlgorithm::SparseAllgather:
      case AllreduceAlgorithm::SparseRecursiveDoubling:
        break;  // rejected above
      case AllreduceAlgorithm::Ring:
        detail::allreduce_ring(ctx, data, dtype, divisor);
        break;
      case AllreduceAlgorithm::RecursiveDoubling:
        detail::allreduce_recursive_doubling(ctx, data, dtype, divisor);
        break;
      case AllreduceAlgorithm::Rabenseifner:
        detail::allreduce_rabenseifner(ctx, data, dtype, divisor);
        break;
    }
    if (options.stats != nullptr) {
      // Dense algorithms reduce while they communicate: all of their time counts as comm.
      *options.stats = AllreduceStats{};
      options.stats->algorithm = algorithm;
      options.stats->comm_seconds = std::chrono::duration<double>(Clock::now() - start).count();
      options.stats->wire_bytes_sent = ctx.bytes_sent();
    }
  });
}

}  // namespace frugal
