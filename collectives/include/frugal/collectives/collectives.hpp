#pragma once

#include <cstddef>
#include <span>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/options.hpp"
#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/communicator.hpp"
#include "frugal/dtype.hpp"

// Dense collectives written once over frugal::Transport. Every rank must call the same
// collectives in the same order with matching sizes. Each one starts with a recursive-doubling
// exchange of a 32-byte block (which collective, count, dtype, op, root, a digest of the counts)
// before any payload: ranks that call different collectives or pass different parameters all get
// Mismatch (see docs/reliability.md, "Disagreeing ranks"). Buffers are the caller's and are only
// used during the call. Errors are frugal::Error; after anything but InvalidArgument the
// communicator is failed (see Communicator).
namespace frugal {

// In-place reduce-scatter. `data` holds `count` elements split into `size()` balanced chunks
// (patterns::chunk_range: sizes differ by at most one, larger first). Afterwards chunk
// `rank()` holds the reduction of that chunk over all ranks; it is returned. The other chunks
// are left with partial sums.
std::span<std::byte> reduce_scatter(Communicator& comm, std::span<std::byte> data, DType dtype,
                                    ReduceOp op = ReduceOp::Sum,
                                    const CollectiveOptions& options = {});

template <Reducible T>
std::span<T> reduce_scatter(Communicator& comm, std::span<T> data, ReduceOp op = ReduceOp::Sum,
                            const CollectiveOptions& options = {}) {
  const std::span<std::byte> mine =
      reduce_scatter(comm, std::as_writable_bytes(data), dtype_of<T>, op, options);
  return {reinterpret_cast<T*>(mine.data()), mine.size() / sizeof(T)};
}

// Every rank contributes `mine`; `out` (size() * mine.size() bytes) receives all contributions
// in rank order.
void allgather(Communicator& comm, std::span<const std::byte> mine, std::span<std::byte> out,
               const CollectiveOptions& options = {});

// As allgather with per-rank sizes: `counts[i]` bytes from rank i, stored back to back in `out`
// (whose size must be the sum). `mine.size()` must equal counts[rank()].
void allgatherv(Communicator& comm, std::span<const std::byte> mine, std::span<std::byte> out,
                std::span<const std::size_t> counts, const CollectiveOptions& options = {});

// Copies `root`'s `data` into every rank's `data` (pipelined binomial tree). Every rank must pass
// the same root and size.
void broadcast(Communicator& comm, std::span<std::byte> data, int root,
               const CollectiveOptions& options = {});

// `send` holds size() equal blocks, block i for rank i; `recv` (same size) receives block i
// from rank i.
void alltoall(Communicator& comm, std::span<const std::byte> send, std::span<std::byte> recv,
              const CollectiveOptions& options = {});

// As alltoall with per-peer byte counts; blocks are stored back to back in rank order.
// send_counts[i] on rank j must equal recv_counts[j] on rank i; the ranks check it together by
// summing a hash of every (sender, receiver, count) pair sent and subtracting the same for every
// pair expected, which cancels only when all pairs match (a false pass needs a 64-bit collision).
void alltoallv(Communicator& comm, std::span<const std::byte> send,
               std::span<const std::size_t> send_counts, std::span<std::byte> recv,
               std::span<const std::size_t> recv_counts, const CollectiveOptions& options = {});

// Returns once every rank has entered the barrier: the agreement exchange itself (recursive
// doubling, folded for non-powers of two), so a rank in another collective gets Mismatch.
void barrier(Communicator& comm, const CollectiveOptions& options = {});

}  // namespace frugal
