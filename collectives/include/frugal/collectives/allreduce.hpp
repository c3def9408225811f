#pragma once

#include <cstddef>
#include <optional>
#include <span>
#include <string_view>

#include "frugal/collectives/options.hpp"
#include "frugal/communicator.hpp"
#include "frugal/dtype.hpp"

namespace frugal {

enum class AllreduceAlgorithm {
  Auto,               // chosen from the message size and the number of ranks
  Ring,               // reduce-scatter + allgather around a ring, pipelined in segments
  RecursiveDoubling,  // log2(P) full exchanges: fewest rounds, for small messages
  Rabenseifner,       // recursive-halving reduce-scatter + recursive-doubling allgather
};

std::string_view to_string(AllreduceAlgorithm algorithm) noexcept;
// "auto", "ring", "recursive_doubling" (or "rd"), "rabenseifner"; nullopt if unknown.
std::optional<AllreduceAlgorithm> parse_allreduce_algorithm(std::string_view text) noexcept;

struct AllreduceOptions : CollectiveOptions {
  ReduceOp op = ReduceOp::Sum;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
};

// Auto's thresholds (bytes of the buffer), from frugal-bench on shared memory, P = 2..4.
inline constexpr std::size_t kRecursiveDoublingMaxBytes = 64 * 1024;
inline constexpr std::size_t kRabenseifnerMaxBytes = 1024 * 1024;

// The algorithm Auto picks for `bytes` bytes on `ranks` ranks.
AllreduceAlgorithm choose_allreduce_algorithm(std::size_t bytes, int ranks) noexcept;

// In-place dense allreduce: afterwards every rank's `data` holds the element-wise sum (or mean)
// over all ranks, bit-identical on every rank. All ranks must pass the same element count, dtype
// and options. Average is defined for floating types only (InvalidArgument for int32). Throws
// frugal::Error; after Timeout, PeerFailure, Transport or Mismatch the communicator is failed.
void allreduce(Communicator& comm, std::span<std::byte> data, DType dtype,
               const AllreduceOptions& options = {});

template <Reducible T>
void allreduce(Communicator& comm, std::span<T> data, const AllreduceOptions& options = {}) {
  allreduce(comm, std::as_writable_bytes(data), dtype_of<T>, options);
}

}  // namespace frugal
