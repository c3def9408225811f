#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "collective_context.hpp"
#include "frugal/collectives/allreduce.hpp"

namespace frugal::detail {

// What every rank of a dense allreduce must agree on, and whether any rank's input holds NaN or
// Inf. Each field travels as the minimum and maximum over the ranks seen so far, merged pairwise
// along recursive doubling, so after log2(P) rounds every rank holds the global minimum and
// maximum: any field whose two differ is a disagreement every rank sees. A message of the wrong
// size (a different count or dtype, or another collective) cannot be merged; its receiver
// "poisons" its block, and the poison travels on to every rank the same way.
class DenseAgreement {
 public:
  enum Field : std::size_t { kCount, kDtype, kOp, kAlgorithm, kNonFiniteAction, kFields };
  // magic, version, flags; count min and max (u64); the other fields' min and max (u8 each).
  static constexpr std::size_t kSize = 8 + 16 + 2 * (kFields - 1);

  DenseAgreement(std::size_t count, DType dtype, ReduceOp op, AllreduceAlgorithm algorithm,
                 NonFiniteAction action, bool non_finite) noexcept;

  void write(std::span<std::byte> out) const noexcept;
  // Merges a peer's block; `intact` is false when the peer's message did not have the expected
  // size (then its bytes are not trusted and the block is poisoned).
  void merge(std::span<const std::byte> in, bool intact) noexcept;
  // Throws Mismatch, on every rank alike, when the ranks disagreed; the communicator is failed
  // without a notice to the peers, who all reach the same verdict.
  void check(CollectiveContext& ctx) const;
  bool non_finite() const noexcept { return non_finite_; }

 private:
  std::array<std::uint64_t, kFields> min_{};
  std::array<std::uint64_t, kFields> max_{};
  bool poisoned_ = false;
  bool non_finite_ = false;
};

// Recursive doubling (with folding of non-power-of-two groups) over [block | data]: merges the
// agreement and, when data is not empty, sums data in place (divided by `divisor` when > 1) as
// allreduce_recursive_doubling does. Messages of the wrong size do not throw but poison the
// block, so every rank completes the same exchanges and then learns of the disagreement.
void agree_recursive_doubling(CollectiveContext& ctx, DenseAgreement& agreement,
                              std::span<std::byte> data, DType dtype, int divisor);

// NaN/Inf scanning and zeroing for float32/float64 buffers (int32 holds none).
bool has_non_finite(std::span<const std::byte> data, DType dtype) noexcept;
std::size_t zero_non_finite(std::span<std::byte> data, DType dtype) noexcept;

}  // namespace frugal::detail
