// GradientBuckets under BucketOptions::hierarchical: the buckets' reduction, in finish().
#include <exception>
#include <span>

#include "frugal/collectives/buckets.hpp"
#include "frugal/collectives/hierarchical.hpp"

namespace frugal {

std::exception_ptr GradientBuckets::reduce_hierarchically(bool& skipped) {
  // One bucket after another, in bucket order on every rank (the collective order): the
  // sub-communicators share the communicator's transport, so nothing may run beside them.
  undo_possible_ = false;
  const bool compressed = options_.allreduce.compression.method != compression::Method::None;
  for (Bucket& b : buckets_) {
    if (b.hierarchical_before) *b.hierarchical_before = *b.hierarchical;
    AllreduceOptions options = options_for(b);
    options.segments = b.segments;
    b.stats = AllreduceStats{};
    options.stats = &b.stats;
    // Dense buckets and runs without error feedback keep no residual.
    HierarchicalState* state =
        compressed && !b.dense && options.error_feedback ? b.hierarchical.get() : nullptr;
    try {
      hierarchical_allreduce(*hierarchy_, std::span<float>(b.data), options, state);
    } catch (...) {
      // Refusals and disagreements are decided alike on every rank by the agreement, so every
      // rank stops at the same bucket; a failed exchange fails the communicator.
      return std::current_exception();
    }
    skipped |= b.stats.non_finite_skipped;
    last_step_wire_bytes_ += b.stats.wire_bytes_sent;
  }
  return nullptr;
}

}  // namespace frugal
