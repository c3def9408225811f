#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/collectives/options.hpp"
#include "frugal/communicator.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/dtype.hpp"
#include "frugal/enum_names.hpp"

namespace frugal {

enum class AllreduceAlgorithm {
  Auto,  // chosen from the method, the message size and the number of ranks
  // Dense (compression method None):
  Ring,               // reduce-scatter + allgather around a ring, pipelined in segments
  RecursiveDoubling,  // log2(P) full exchanges: fewest rounds, for small messages
  Rabenseifner,       // recursive-halving reduce-scatter + recursive-doubling allgather
  // Quantizers (fp16, bf16, 1-bit, ternary, QSGD):
  TwoPhase,  // encode P chunks -> alltoall -> reduce own chunk -> re-encode -> allgather
  // Top-k:
  SparseAllgather,          // every rank's (index, value) pairs to every rank, summed locally
  SparseRecursiveDoubling,  // SparCML: merge sparse vectors pairwise, dense past break-even
  // Quantizers again: every rank's encoded buffer to every rank, decoded and summed locally in
  // rank order. One compression per step where TwoPhase has two (no owner re-encode, no server
  // residual), for (P-1) payloads per rank where TwoPhase sends 2(P-1)/P: the same bytes at
  // P = 2, more beyond. Auto's choice for quantizers at P <= 2.
  Allgather,
};

// The names of the algorithms (first row of a value: its canonical name; later rows: aliases
// that parse accepts). enum_choices<AllreduceAlgorithm>() lists them for messages.
template <>
struct EnumNames<AllreduceAlgorithm> {
  static constexpr std::array<EnumName<AllreduceAlgorithm>, 10> table{{
      {AllreduceAlgorithm::Auto, "auto"},
      {AllreduceAlgorithm::Ring, "ring"},
      {AllreduceAlgorithm::RecursiveDoubling, "recursive_doubling"},
      {AllreduceAlgorithm::Rabenseifner, "rabenseifner"},
      {AllreduceAlgorithm::TwoPhase, "two_phase"},
      {AllreduceAlgorithm::SparseAllgather, "sparse_allgather"},
      {AllreduceAlgorithm::SparseRecursiveDoubling, "sparse_rd"},
      {AllreduceAlgorithm::Allgather, "allgather"},
      {AllreduceAlgorithm::RecursiveDoubling, "rd"},
      {AllreduceAlgorithm::SparseRecursiveDoubling, "sparse_recursive_doubling"},
  }};
};

// The canonical name from the table; "unknown" for a value outside the enum.
std::string_view to_string(AllreduceAlgorithm algorithm) noexcept;
// Any name or alias of the table ("rd", "sparse_recursive_doubling"); nullopt if unknown.
std::optional<AllreduceAlgorithm> parse_allreduce_algorithm(std::string_view text) noexcept;

// Whether allreduce() runs `algorithm` with compression `method`: Auto runs every method; Ring,
// RecursiveDoubling and Rabenseifner only None (dense); TwoPhase and Allgather the quantizers
// (fp16, bf16, 1-bit, ternary, QSGD); SparseAllgather and SparseRecursiveDoubling top-k. Any
// other pair is InvalidArgument naming `algorithm`. False for values outside either enum.
bool algorithm_supports(AllreduceAlgorithm algorithm, compression::Method method) noexcept;

// The named algorithms (all but Auto) that algorithm_supports for `method`, comma-separated in
// enum order, e.g. "two_phase, allgather" for a quantizer; empty for a value outside the enum.
// For error messages, so that each caller lists exactly what allreduce() would accept.
std::string supported_algorithms(compression::Method method);

// What an allreduce does when some rank's input holds NaN or Inf. Error and Skip are decided
// collectively (each rank's "I have NaN/Inf" flag travels with the collective's header), so
// every rank takes the same decision; all ranks must pass the same action (else Mismatch).
enum class NonFiniteAction : std::uint8_t {
  // Dense: no check, NaN/Inf flow into the sum as with MPI_Allreduce (no cost). Compressed:
  // Error when compression.non_finite is NonFinitePolicy::Error (its default), else no check.
  Default,
  // Every rank throws InvalidArgument naming `non_finite`; buffers keep their input, residuals
  // and step counter are untouched, and the communicator stays usable.
  Error,
  // Every rank skips the step: its buffer keeps its input, the state's residuals and step
  // counter are untouched (the next step computes what it would have computed without this
  // one; no NaN reaches a residual, top-k's included), and AllreduceStats::non_finite_skipped is
  // set on every rank: the single allreduce's last_step_skipped(). A sum of finite inputs that
  // overflows to Inf is not a skip here (error feedback has absorbed the step by then): the
  // result holds Inf on every rank, as does a compressed chunk whose sum its owner cannot
  // re-encode (fp16 beyond 65504), where Error and Default throw instead. GradientBuckets, which
  // keeps a copy of its states, skips that step too, and skips whole steps.
  Skip,
  // Each rank replaces its own NaN/Inf by 0 before compressing or reducing
  // (AllreduceStats::non_finite_zeroed counts them).
  Zero,
};

template <>
struct EnumNames<NonFiniteAction> {
  static constexpr std::array<EnumName<NonFiniteAction>, 4> table{
      {{NonFiniteAction::Default, "default"},
       {NonFiniteAction::Error, "error"},
       {NonFiniteAction::Skip, "skip"},
       {NonFiniteAction::Zero, "zero"}}};
};

// From the table: "default", "error", "skip", "zero"; "unknown" / nullopt otherwise.
std::string_view to_string(NonFiniteAction action) noexcept;
std::optional<NonFiniteAction> parse_non_finite_action(std::string_view text) noexcept;

// What an allreduce did, filled in when AllreduceOptions::stats is set. Dense algorithms report
// their whole time as comm_seconds (they reduce while they communicate).
struct AllreduceStats {
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;  // the algorithm that ran
  double encode_seconds = 0;        // compensating, encoding and error-feedback bookkeeping
  double comm_seconds = 0;          // waiting for messages
  double decode_seconds = 0;        // decoding and reducing received payloads
  std::size_t wire_bytes_sent = 0;  // payload bytes this rank sent (collective headers included)
  // Sparse recursive doubling: the first exchange step (0-based) at which this rank's vector
  // travelled dense because sparse pairs would have been larger; -1 if it never did.
  int dense_switch_step = -1;
  // NonFiniteAction::Skip: some rank had NaN/Inf, so every rank skipped this step.
  bool non_finite_skipped = false;
  // NonFiniteAction::Zero: NaN/Inf entries of this rank's input replaced by 0.
  std::size_t non_finite_zeroed = 0;
};

struct AllreduceOptions : CollectiveOptions {
  ReduceOp op = ReduceOp::Sum;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
  // The method and its parameters (k or density, bits, bucket, scaling, ...). Method None is the
  // dense allreduce. Compressed methods take float32 only.
  compression::CompressionConfig compression;
  // Compressed methods: keep what compression dropped in `state` and add it back next time
  // (worker side, and server side for two-phase). Needs `state`; InvalidArgument without it.
  bool error_feedback = true;
  // Compressed methods: the random streams of the stochastic quantizers are keyed by
  // (seed, rank, step), step being state->steps() (or the communicator's sequence number when
  // there is no state), so runs are reproducible: a rank encodes element i of its buffer with
  // compression::Rng(seed, rank, step) at position i, and the two-phase owner of a chunk
  // re-encodes it with Rng(seed ^ kServerSeedSalt, owner, step) at the chunk's first element
  // (each chunk has its own owner, hence its own stream). Nothing here tells two buffers apart:
  // buffers reduced at the same step with the same seed draw the same number for their element
  // i, and their rounding errors are correlated instead of averaging out. Give each buffer its
  // own seed, e.g. compression::stream_seed(seed, buffer id), as GradientBuckets does with each
  // bucket's layout key.
  std::uint64_t seed = 0;
  // Per-buffer state that lives across calls (residuals, step counter); owned by the caller,
  // one per buffer (or bucket). May be null when error_feedback is off.
  AllreduceState* state = nullptr;
  // Filled in when non-null.
  AllreduceStats* stats = nullptr;
  // NaN/Inf in the input: see NonFiniteAction.
  NonFiniteAction non_finite = NonFiniteAction::Default;
  // The tensors the buffer holds, end to end: their element counts, in order, summing to the
  // element count (each > 0; else InvalidArgument naming `segments`). Empty means one tensor,
  // exactly as {count}. Compressed methods never let a scale, norm or chunk cover two segments
  // (1-bit, ternary, QSGD encode each segment, and each piece of a segment that the two-phase
  // split cuts, as a payload of its own; fp16/bf16 have no shared scale and ignore them) and
  // top-k selects per segment under compression.topk_scope = PerTensor. Every rank must pass
  // the same segments (Mismatch otherwise) and a state is bound to them. Not owned: must stay
  // valid for the call (allreduce_async copies them).
  std::span<const std::size_t> segments;
};

// Keeps the owner's re-encode in the two-phase algorithm off the workers' random numbers.
inline constexpr std::uint64_t kServerSeedSalt = 0x5345525645520001ULL;

// Auto's thresholds (bytes of the buffer), from frugal-bench on shared memory, P = 2..4.
inline constexpr std::size_t kRecursiveDoublingMaxBytes = 64 * 1024;
inline constexpr std::size_t kRabenseifnerMaxBytes = 1024 * 1024;

// The algorithm Auto picks for a dense buffer of `bytes` bytes on `ranks` ranks.
AllreduceAlgorithm choose_allreduce_algorithm(std::size_t bytes, int ranks) noexcept;

// The algorithm Auto picks for `options` (method, density) on `count` floats and `ranks` ranks.
AllreduceAlgorithm choose_allreduce_algorithm(const AllreduceOptions& options, std::size_t count,
                                              int ranks) noexcept;

// In-place allreduce: afterwards every rank's `data` holds the element-wise sum (or mean) over
// all ranks, bit-identical on every rank. All ranks must pass the same element count, dtype and
// options. Average is defined for floating types only (InvalidArgument for int32).
//
// With a compression method the result is the sum of what the ranks' compressed contributions
// decode to (top-k: the sum of every rank's top-k selection, not re-sparsified; two-phase: each
// chunk's sum, re-encoded once more by its owner). Ranks that disagree on count, method or
// parameters get Mismatch on every rank before any payload is decoded. With NonFiniteAction
// Error, Skip, Zero (and Default under NonFinitePolicy::Error) a finite input beyond the format's
// range after error feedback (Compressor::flag_free_magnitude(): fp16 65504, ...) is decided on
// every rank like NaN/Inf; a two-phase chunk whose sum leaves the range is InvalidArgument on
// every rank (docs/reliability.md, "NaN and Inf").
//
// Dense allreduces also agree before reducing: a small block (count, dtype, op, algorithm,
// non-finite action and flag) travels with the payload of recursive doubling, or in a recursive-
// doubling exchange of its own ahead of ring and Rabenseifner, so ranks that disagree on any of
// these (or call allreduces in a different order) get Mismatch on every rank.
//
// Throws frugal::Error; after Timeout, PeerFailure, Transport or Mismatch the communicator is
// failed. Not thread-safe per communicator (see Communicator).
void allreduce(Communicator& comm, std::span<std::byte> data, DType dtype,
               const AllreduceOptions& options = {});

template <Reducible T>
void allreduce(Communicator& comm, std::span<T> data, const AllreduceOptions& options = {}) {
  allreduce(comm, std::as_writable_bytes(data), dtype_of<T>, options);
}

}  // namespace frugal
