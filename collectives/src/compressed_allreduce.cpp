#include "compressed_allreduce.hpp"

#include <optional>
#include <string>

#include "../patterns/chunking.hpp"
#include "agreement.hpp"
#include "collective_context.hpp"
#include "compressed_run.hpp"
#include "compressed_segments.hpp"
#include "refusal.hpp"
#include "state_binding.hpp"

namespace frugal::detail {

void compressed_allreduce(Communicator& comm, std::span<float> data,
                          const AllreduceOptions& options, const AllreducePlan& plan) {
  const compression::Compressor& compressor = *plan.compressor;
  const compression::Method method = options.compression.method;
  const AllreduceAlgorithm algorithm = plan.algorithm;
  const bool two_phase = algorithm == AllreduceAlgorithm::TwoPhase;

  compression::ErrorFeedback* worker = nullptr;
  compression::ErrorFeedback* server = nullptr;
  std::uint64_t step = comm.sequence();
  // A state bound to another layout or algorithm is refused on every rank (refusal.hpp).
  refusing(comm, options, plan.terms, [&] {
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
      layout.op = static_cast<std::uint8_t>(options.op);
      layout.k = compressor.k_for(data.size());
      layout.segments = segments_digest(options.segments);
      layout.gtopk = options.compression.gtopk ? 1 : 0;
      StateBinding::bind(*options.state, layout, options.error_feedback ? data.size() : 0,
                         options.error_feedback ? own_chunk : 0);
      if (options.error_feedback) {
        worker = StateBinding::worker(*options.state);
        server = StateBinding::server(*options.state);
        // The layout does not record the algorithm; the server residual does. Going on with the
        // wrong one would silently drop two-phase's server error feedback.
        // A compressed_allgather's state holds a server residual alone.
        if ((server != nullptr) != (own_chunk > 0) || (worker == nullptr && data.size() > 0)) {
          throw Error(ErrorCode::Mismatch,
                      std::string("AllreduceState was used with ") +
                          (server != nullptr ? "two_phase" : "another algorithm") + "; now " +
                          std::string(to_string(algorithm)) +
                          " (one state per buffer and algorithm; reset() to reuse)");
        }
      }
      step = options.state->steps();
    }
  });

  // Per-tensor top-k encodes each segment with its own k; `compressor` (k = their sum) decodes.
  std::optional<PerTensorTopK> per_tensor;
  if (method == compression::Method::TopK &&
      options.compression.topk_scope == compression::TopKScope::PerTensor &&
      splits(options.segments)) {
    per_tensor.emplace(options.compression, options.segments,
                       compression::make_compressor(options.compression)->k_for(data.size()));
  }

  std::size_t zeroed = 0;
  if (options.non_finite == NonFiniteAction::Zero) {
    zeroed = zero_non_finite(std::as_writable_bytes(data), DType::Float32);
  }
  bool skipped = false;
  run_collective(comm, options, [&](CollectiveContext& ctx) {
    // The agreement is the only exchange before the payloads, with the same pairing, tag and
    // block size as a dense ring or Rabenseifner call: a rank that calls dense where the others
    // call compressed (or the reverse) takes part in it alike, sees a different algorithm or a
    // poisoned block, and every rank throws Mismatch. The compression parameters travel in it
    // as a digest, and the NaN/Inf/out-of-range flags as bits, so no second exchange (an
    // all-to-all header, which a dense rank would not follow) is needed.
    CompressedRun run(ctx, options, compressor, algorithm, worker, server, step,
                      per_tensor ? &*per_tensor : nullptr);
    run.stats().non_finite_zeroed = zeroed;
    if (run.checks_early()) run.scan_input(data);
    // false: the step is skipped (NaN/Inf or a value out of range on some rank).
    if (run.agree(plan.terms)) {
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
    }
    skipped = run.stats().non_finite_skipped;
    run.publish();
  });
  if (options.state != nullptr && !skipped) StateBinding::advance(*options.state);
}

}  // namespace frugal::detail
