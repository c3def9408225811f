// The two halves of the two-phase compressed allreduce as collectives of their own, for sharded
// optimizers (ZeRO-1 style): reduce-scatter the gradient so that each rank holds the sum of its
// shard, update that shard, allgather the parameters.
#pragma once

#include <cstddef>
#include <span>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/communicator.hpp"

namespace frugal {

// Elements [offset, offset + count) of a buffer.
struct ShardRange {
  std::size_t offset = 0;
  std::size_t count = 0;
  constexpr std::size_t end() const noexcept { return offset + count; }
  friend bool operator==(const ShardRange&, const ShardRange&) = default;
};

// The shard of a `count`-element buffer that `rank` of `ranks` owns: the buffer cut into `ranks`
// contiguous ranges in rank order whose sizes differ by at most one, the larger ones first (the
// split of the two-phase allreduce and of the dense reduce_scatter). Segments
// (AllreduceOptions::segments) do not move these boundaries: a segment that straddles two shards
// is encoded as one payload per shard, so every owner's share of the work stays even. Throws
// InvalidArgument naming `ranks` unless ranks >= 1, `rank` unless 0 <= rank < ranks.
ShardRange reduce_scatter_shard(std::size_t count, int ranks, int rank);

// Compressed reduce-scatter: phase one of the two-phase allreduce. Every rank encodes its
// `input` (the whole buffer, n elements) in comm.size() shards with worker-side error feedback
// and sends shard c to rank c; afterwards `output` (reduce_scatter_shard(n, size, rank).count
// elements) holds the sum (op Sum) or mean (Average) of what every rank's payload for this rank's
// shard decodes to, added in rank order. `input` is used as scratch: its contents afterwards are
// unspecified. `output` may be input's own shard (in place) or lie outside `input`.
//
// options: compression.method None is the dense ring reduce-scatter (the exact sum or mean; no
// state, NonFiniteAction Default or Zero). The quantizers (fp16, bf16, 1-bit, ternary, QSGD) run
// compressed; top-k is InvalidArgument naming `compression.method`. algorithm must be Auto or
// TwoPhase (compressed), Auto or Ring (dense). With error_feedback, `state` keeps the worker
// residual (n elements) and the step counter that keys the random streams, exactly as the
// two-phase allreduce's state does; a state used by an allreduce or an allgather is Mismatch.
// segments, seed, non_finite, stats: as for allreduce.
//
// Bad arguments on any rank (an `output` of the wrong size, a bad parameter) make that rank
// throw InvalidArgument naming the parameter and every other rank Mismatch, after one exchange
// of the agreement block, so nobody waits for a timeout; the communicator is failed then (on one
// rank alone, nothing is sent and it stays usable). Ranks that disagree on the element count,
// op, method or a parameter get Mismatch on every rank.
void compressed_reduce_scatter(Communicator& comm, std::span<float> input, std::span<float> output,
                               const AllreduceOptions& options);

// Compressed allgather: phase two of the two-phase allreduce. Every rank encodes its `shard`
// (reduce_scatter_shard(n, size, rank) of an n-element buffer) with its own error feedback and
// sends it to every rank; afterwards `output` (n elements) holds every rank's decoded shard,
// bit-identical on every rank (the owner, too, keeps the decoded shard, not its input). `shard` may
// be output's own shard (in place) or lie outside `output`.
//
// options: as for compressed_reduce_scatter, with these differences. op is ignored (the shards
// are gathered as they are). With error_feedback, `state` keeps the shard's residual (the
// two-phase allreduce's server residual) and its own step counter. NonFiniteAction Zero is
// InvalidArgument (the shard is read-only); Error and Skip scan the shard. The owner's stream is
// Rng(seed ^ kServerSeedSalt, rank, step) at the shard's elements: with states that have made
// the same number of steps, compressed_reduce_scatter into a buffer followed by
// compressed_allgather of it equals the two-phase allreduce bit for bit. Dense (method None):
// the plain allgather of the shards.
void compressed_allgather(Communicator& comm, std::span<const float> shard, std::span<float> output,
                          const AllreduceOptions& options);

}  // namespace frugal
