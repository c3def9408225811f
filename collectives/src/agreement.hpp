// The agreement block every collective starts with: what the ranks must agree on, merged along
// recursive doubling so that every rank reaches the same verdict.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>

#include "collective_context.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/enum_names.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

// Which collective a rank is calling: ranks that call different ones disagree.
enum class CollectiveKind : std::uint8_t {
  Allreduce = 1,
  ReduceScatter,
  Allgather,
  Allgatherv,
  Broadcast,
  Alltoall,
  Alltoallv,
  Barrier,
};

}  // namespace frugal::detail

template <>
struct frugal::EnumNames<frugal::detail::CollectiveKind> {
  using CollectiveKind = frugal::detail::CollectiveKind;
  static constexpr std::array<EnumName<CollectiveKind>, 8> table{
      {{CollectiveKind::Allreduce, "allreduce"},
       {CollectiveKind::ReduceScatter, "reduce_scatter"},
       {CollectiveKind::Allgather, "allgather"},
       {CollectiveKind::Allgatherv, "allgatherv"},
       {CollectiveKind::Broadcast, "broadcast"},
       {CollectiveKind::Alltoall, "alltoall"},
       {CollectiveKind::Alltoallv, "alltoallv"},
       {CollectiveKind::Barrier, "barrier"}}};
};

namespace frugal::detail {

// From the table; "unknown" for a kind outside it (a peer's corrupted block).
constexpr std::string_view to_string(CollectiveKind kind) noexcept {
  return enum_name(kind);
}

// What the ranks of a compressed allreduce must also agree on: the method and every parameter
// that shapes its payloads or its NaN/Inf decision, as used (a bucket of 0 resolved to the
// method's default, k as k_for(count)). All 0 for a dense allreduce and for other collectives.
struct CompressionTerms {
  std::uint8_t method = 0;
  std::uint8_t variant = 0;    // top-k value format, 1-bit scaling, QSGD norm, bf16 rounding
  std::uint8_t selection = 0;  // top-k: exact or sampled
  std::uint8_t error_feedback = 0;
  std::uint8_t policy = 0;  // the compressor's NonFinitePolicy
  std::uint32_t bits = 0;
  std::uint32_t bucket = 0;
  std::uint64_t k = 0;
  std::uint64_t tolerance_bits = 0;  // sampled top-k: the bits of its double tolerance
  std::uint32_t clip_bits = 0;       // ternary: the bits of its float clip_sigma
  std::uint64_t seed = 0;
  std::uint64_t segments = 0;   // segments_digest of AllreduceOptions::segments (0: one)
  std::uint8_t topk_scope = 0;  // top-k: TopKScope
  std::uint8_t gtopk = 0;       // top-k: the sum cut back to k (CompressionConfig::gtopk)
};

// A 64-bit digest of the terms, 0 for all-zero terms (dense): it travels in the agreement
// block's param slot, which an allreduce has no other use for.
std::uint64_t compression_digest(const CompressionTerms& terms) noexcept;

// What every rank of one collective must agree on. Fields a kind does not use stay 0.
struct AgreementTerms {
  CollectiveKind kind = CollectiveKind::Barrier;
  // allreduce, reduce_scatter: elements; allgather: bytes per rank; allgatherv: total bytes;
  // broadcast: bytes; alltoall: bytes per block.
  std::uint64_t count = 0;
  DType dtype{};
  ReduceOp op{};
  AllreduceAlgorithm algorithm{};
  NonFiniteAction action{};
  // broadcast: the root; allgatherv: counts_digest(counts); alltoallv: pair_digest(...), which
  // the ranks sum (not compare): it sums to 0 over all ranks exactly when every rank's
  // send_counts[q] equals rank q's recv_counts[rank] (up to a 2^-64 chance of a collision).
  // allreduce: ignored; the block carries compression_digest(compression) there instead.
  std::uint64_t param = 0;
  CompressionTerms compression;  // allreduce only
};

// A 64-bit digest of a counts array that every rank passes alike.
std::uint64_t counts_digest(std::span<const std::size_t> counts) noexcept;
// This rank's share of the alltoallv pair check: + hash(rank, q, send_counts[q]) for every q,
// - hash(q, rank, recv_counts[q]) for every q.
std::uint64_t pair_digest(int rank, std::span<const std::size_t> send_counts,
                          std::span<const std::size_t> recv_counts) noexcept;

// The agreement block: the terms merged pairwise along recursive doubling, so that after
// log2(P) rounds every rank holds the same merged block and any disagreement is seen by every
// rank alike. Small fields travel as their minimum and maximum over the ranks seen so far; the
// 64-bit count and param as their minimum plus a "differs" flag (the alltoallv param as a sum);
// whether any rank's input holds NaN or Inf, and whether any holds a finite value beyond its
// compressor's range, as flags; whether any rank refused its own arguments, as a flag that is
// read even from a message of the wrong size. A message of the wrong size (an allreduce
// whose payload travels inline, against a different count, dtype or collective) cannot be
// merged: its receiver "poisons" its block, and the poison travels on to every rank the same way.
class CollectiveAgreement {
 public:
  // magic, version, flags, kind min and max; count (u64); param (u64); dtype, op, algorithm and
  // non-finite action min and max (u8 each).
  static constexpr std::size_t kSize = 32;

  // `non_finite`: this rank's input holds NaN or Inf; `out_of_range`: a finite value its
  // compressor cannot carry (compressed allreduce). Both are OR-ed over the ranks.
  explicit CollectiveAgreement(const AgreementTerms& terms, bool non_finite = false,
                               bool out_of_range = false) noexcept;

  void write(std::span<std::byte> out) const noexcept;
  // Merges a peer's block; `intact` is false when the peer's message did not have the expected
  // size (then its bytes are not trusted and the block is poisoned).
  void merge(std::span<const std::byte> in, bool intact) noexcept;
  // Takes over a block that already holds this rank's contribution (a folded rank receiving its
  // proxy's result), instead of merging it a second time into the alltoallv sum.
  void adopt(std::span<const std::byte> in, bool intact) noexcept;
  // Marks this rank's block refused (see refusal.hpp): its peers then stop after the agreement.
  void refuse() noexcept { refused_ = true; }
  bool refused() const noexcept { return refused_; }
  // The Mismatch this rank reports when the ranks disagreed, else nothing.
  std::optional<Error> verdict(int rank) const;
  // When some rank refused its arguments: learns every refusing rank's error and throws it
  // (refusals()), the communicator left usable. Else throws verdict(), on every rank alike;
  // the communicator is failed without a notice to the peers, who all reach the same verdict (a
  // notice would make a peer still finishing the exchange throw PeerFailure).
  void check(CollectiveContext& ctx) const;
  bool non_finite() const noexcept { return non_finite_; }
  bool out_of_range() const noexcept { return out_of_range_; }

 private:
  enum Small : std::size_t { kDtype, kOp, kAlgorithm, kAction, kSmall };
  CollectiveKind own_kind_;
  std::uint64_t own_count_;
  std::uint64_t own_param_;
  CompressionTerms own_compression_;  // for the message when the digests differ
  std::uint8_t kind_min_, kind_max_;
  std::uint64_t count_;
  std::uint64_t param_;
  std::array<std::uint8_t, kSmall> min_{};
  std::array<std::uint8_t, kSmall> max_{};
  bool count_differs_ = false;
  bool param_differs_ = false;
  bool poisoned_ = false;
  bool non_finite_ = false;
  bool out_of_range_ = false;
  bool refused_ = false;
};

// Recursive doubling (with folding of non-power-of-two groups) over [block | data]: merges the
// agreement and, when data is not empty, sums data in place (divided by `divisor` when > 1) as
// allreduce_recursive_doubling does. Messages of the wrong size do not throw but poison the
// block, so every rank completes the same exchanges and then learns of the disagreement.
// Returns only once every rank has entered (it is also a barrier).
void agree_recursive_doubling(CollectiveContext& ctx, CollectiveAgreement& agreement,
                              std::span<std::byte> data, DType dtype, int divisor);

// The block-only exchange every collective but the inline allreduce starts with: one
// recursive-doubling round trip of kSize-byte messages, then check(). Nothing with one rank.
void agree(CollectiveContext& ctx, const AgreementTerms& terms);

// NaN/Inf scanning and zeroing for float32/float64 buffers (int32 holds none).
bool has_non_finite(std::span<const std::byte> data, DType dtype) noexcept;
std::size_t zero_non_finite(std::span<std::byte> data, DType dtype) noexcept;

}  // namespace frugal::detail
