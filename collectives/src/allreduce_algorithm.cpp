// Everything that decides which allreduce algorithm runs: names, which methods each runs, and
// Auto's choice, dense and compressed.
#include <string>

#include "../patterns/recursive_doubling.hpp"
#include "frugal/collectives/allreduce.hpp"

namespace frugal {

std::string_view to_string(AllreduceAlgorithm algorithm) noexcept {
  return enum_name(algorithm);
}

std::optional<AllreduceAlgorithm> parse_allreduce_algorithm(std::string_view text) noexcept {
  return parse_enum<AllreduceAlgorithm>(text);
}

bool algorithm_supports(AllreduceAlgorithm algorithm, compression::Method method) noexcept {
  using compression::Method;
  bool quantizer = false;
  switch (method) {
    case Method::None:
    case Method::TopK:
      break;
    case Method::Fp16:
    case Method::Bf16:
    case Method::OneBit:
    case Method::Ternary:
    case Method::Qsgd:
      quantizer = true;
      break;
  }
  const bool known = quantizer || method == Method::None || method == Method::TopK;
  switch (algorithm) {
    case AllreduceAlgorithm::Auto:
      return known;
    case AllreduceAlgorithm::Ring:
    case AllreduceAlgorithm::RecursiveDoubling:
    case AllreduceAlgorithm::Rabenseifner:
      return method == Method::None;
    case AllreduceAlgorithm::TwoPhase:
    case AllreduceAlgorithm::Allgather:
      return quantizer;
    case AllreduceAlgorithm::SparseAllgather:
    case AllreduceAlgorithm::SparseRecursiveDoubling:
      return method == Method::TopK;
  }
  return false;
}

std::string supported_algorithms(compression::Method method) {
  std::string out;
  for (const AllreduceAlgorithm a : enum_values<AllreduceAlgorithm>()) {
    if (a == AllreduceAlgorithm::Auto || !algorithm_supports(a, method)) continue;
    if (!out.empty()) out += ", ";
    out += to_string(a);
  }
  return out;
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

AllreduceAlgorithm choose_allreduce_algorithm(const AllreduceOptions& options, std::size_t count,
                                              int ranks) noexcept {
  using compression::Method;
  switch (options.compression.method) {
    case Method::None:
      return choose_allreduce_algorithm(count * sizeof(float), ranks);
    case Method::TopK: {
      // gTop-k cuts at every step of recursive doubling: it runs nowhere else.
      if (options.compression.gtopk) return AllreduceAlgorithm::SparseRecursiveDoubling;
      // When the P selections together would pass the break-even density, the sum is better
      // carried dense: recursive doubling switches over, the allgather cannot.
      const double density =
          options.compression.k != 0 && count > 0
              ? static_cast<double>(options.compression.k) / static_cast<double>(count)
              : options.compression.density;
      return density * ranks >= 0.5 ? AllreduceAlgorithm::SparseRecursiveDoubling
                                    : AllreduceAlgorithm::SparseAllgather;
    }
    case Method::Fp16:
    case Method::Bf16:
    case Method::OneBit:
    case Method::Ternary:
    case Method::Qsgd:
      // At P <= 2 the allgather sends what two-phase sends ((P-1) payloads vs 2(P-1)/P) and
      // quantizes each value once instead of twice (the owner's re-encode adds a second
      // rounding error, and a server residual that lags a step). Beyond two ranks two-phase
      // moves fewer bytes.
      return ranks <= 2 ? AllreduceAlgorithm::Allgather : AllreduceAlgorithm::TwoPhase;
  }
  return AllreduceAlgorithm::TwoPhase;
}

}  // namespace frugal
