#include "compressed_allreduce.hpp"

#include <string>

#include "../patterns/chunking.hpp"
#include "collective_context.hpp"
#include "compressed_run.hpp"
#include "agreement.hpp"
#include "state_binding.hpp"

namespace frugal {

AllreduceAlgorithm choose_allreduce_algorithm(const AllreduceOptions& options, std::size_t count,
                                              int ranks) noexcept {
  using compression::Method;
  switch (options.compression.method) {
    case Method::None:
      return choose_allreduce_algorithm(count * sizeof(float), ranks);
    case Method::TopK: {
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
      return AllreduceAlgorithm::TwoPhase;
  }
  return AllreduceAlgorithm::TwoPhase;
}

namespace detail {

void compressed_allreduce(Communicator& comm, std::span<float> data,
                          const AllreduceOptions& options) {
  using compression::Method;
  const auto compressor = compression::make_compressor(options.compression);
  const Method method = options.compression.method;
  AllreduceAlgorithm algorithm = options.algorithm;
  if (algorithm == AllreduceAlgorithm::Auto) {
    algorithm = choose_allreduce_algorithm(options, data.size(), comm.size());
  }
  const bool two_phase = algorithm == AllreduceAlgorithm::TwoPhase;
  if (!algorithm_supports(algorithm, method)) {
    require(false, "algorithm",
            std::string(to_string(algorithm)) + " cannot run " +
                std::string(compression::to_string(method)) + "; use " +
                supported_algorithms(method) + " (or auto)");
  }
  require(!options.error_feedback || options.state != nullptr, "state",
          "error feedback needs an AllreduceState that lives across calls (or set "
          "error_feedback = false)");

  compression::ErrorFeedback* worker = nullptr;
  compression::ErrorFeedback* server = nullptr;
  std::uint64_t step = comm.sequence();
  if (options.state != nullptr) {
    // Only the two-phase owner re-encodes, so only it has a server residual.
    const std::size_t own_chunk =
        two_phase ? patterns::chunk_range(data.size(), comm.size(), comm.rank()).count : 0;
    AllreduceState::Layout layout;
    layout.count = data.size();
    layout.ranks = comm.size();
    layout.rank = comm.rank();
    layout.method = static_cast<std::uint8_t>(method);
    layout.feedback = options.error_feedback ? 1 : 0;
    StateBinding::bind(*options.state, layout, options.error_feedback ? data.size() : 0,
                       options.error_feedback ? own_chunk : 0);
    if (options.error_feedback) {
      worker = StateBinding::worker(*options.state);
      server = StateBinding::server(*options.state);
      // The layout does not record the algorithm; the server residual does. Going on with the
      // wrong one would silently drop two-phase's server error feedback.
      if ((server != nullptr) != (own_chunk > 0)) {
        throw Error(ErrorCode::Mismatch,
                    std::string("AllreduceState was used with ") +
                        (server != nullptr ? "two_phase" : "another algorithm") + "; now " +
                        std::string(to_string(algorithm)) +
                        " (one state per buffer and algorithm; reset() to reuse)");
      }
    }
    step = options.state->steps();
  }

  require(
      options.non_finite >= NonFiniteAction::Default && options.non_finite <= NonFiniteAction::Zero,
      "non_finite", "unknown NonFiniteAction");
  std::size_t zeroed = 0;
  if (options.non_finite == NonFiniteAction::Zero) {
    zeroed = zero_non_finite(std::as_writable_bytes(data), DType::Float32);
  }
  bool skipped = false;
  run_collective(comm, options, [&](CollectiveContext& ctx) {
    // The dense allreduce's agreement exchange comes first, with the same pairing, tag and block
    // size as a dense ring or Rabenseifner call: a rank that calls dense where the others call
    // compressed (or the reverse) takes part in it alike, sees a different algorithm or a
    // poisoned block, and every rank throws Mismatch before the all-to-all header exchange,
    // whose pattern a dense rank would not follow. Compression parameters are compared by the
    // header afterwards, among ranks that all run compressed.
    AgreementTerms terms;
    terms.kind = CollectiveKind::Allreduce;
    terms.count = data.size();
    terms.dtype = DType::Float32;
    terms.op = options.op;
    terms.algorithm = algorithm;
    terms.action = options.non_finite;
    agree(ctx, terms);
    CompressedRun run(ctx, options, *compressor, algorithm, data.size(), worker, server, step);
    run.stats().non_finite_zeroed = zeroed;
    if (run.checks_early()) run.scan_input(data);
    switch (algorithm) {
      case AllreduceAlgorithm::SparseAllgather:
      case AllreduceAlgorithm::Allgather:
        compressed_allgather(run, data);
        break;
      case AllreduceAlgorithm::SparseRecursiveDoubling:
        sparse_recursive_doubling(run, data);
        break;
      default:
        compressed_two_phase(run, data);
        break;
    }
    skipped = run.stats().non_finite_skipped;
    run.publish();
  });
  if (options.state != nullptr && !skipped) StateBinding::advance(*options.state);
}

}  // namespace detail
}  // namespace frugal
