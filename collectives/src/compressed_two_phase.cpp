// Two-phase compressed allreduce (DeepSpeed's compressed_allreduce, generalised to every
// quantizer): each rank encodes its buffer in P chunks with worker-side error feedback and sends
// chunk c to rank c; rank c decodes and sums its chunk from everyone, re-encodes the sum with
// server-side error feedback and sends it to every rank; everyone decodes every chunk. Each rank
// sends about 2 (P-1)/P of the compressed buffer, like a ring allreduce of compressed data.
// The phases are the compressed reduce-scatter and allgather (compressed_phases.cpp).
#include "compressed_phases.hpp"
#include "scratch_arena.hpp"

namespace frugal::detail {

void compressed_two_phase(CompressedRun& run, std::span<float> data) {
  const TwoPhaseLayout layout(run, data.size(), run.ctx().size());
  const patterns::Range own = layout.chunk(static_cast<std::size_t>(run.ctx().rank()));
  const std::span<float> sum = scratch_of<float>(ScratchSlot::Sum, own.count);
  two_phase_scatter(run, layout, data, sum);
  two_phase_gather(run, layout, sum, data);
}

}  // namespace frugal::detail
