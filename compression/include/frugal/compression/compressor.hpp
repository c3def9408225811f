#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "frugal/compression/payload.hpp"
#include "frugal/compression/rng.hpp"
#include "frugal/enum_names.hpp"

namespace frugal::compression {

class ErrorFeedback;
struct FeedbackEncoder;

// What encode does when the input holds NaN or Inf, or a value the format cannot hold (fp16
// above 65504, bf16 rounding past FLT_MAX): such values would otherwise turn a whole bucket's
// scale, or the receiver's sum, into garbage.
enum class NonFinitePolicy : std::uint8_t {
  Error,  // throw frugal::Error(InvalidArgument); the output buffer's contents are unspecified
  Flag,   // encode anyway and set PayloadHeader::kNonFinite, which every receiver can see with
          // read_header (so all ranks can agree to skip the step)
};

enum class TopKSelection : std::uint8_t {
  Exact,    // exactly k elements: the k largest |x|, ties broken towards the lower index
  Sampled,  // DGC-style: threshold estimated from a sample; count within `tolerance` of k
};

enum class TopKValues : std::uint8_t { Fp32 = 0, Fp16 = 1 };

// Where top-k selects when the buffer holds several tensors (AllreduceOptions::segments).
enum class TopKScope : std::uint8_t {
  Global = 0,  // one selection (one threshold) over the whole buffer
  // Each segment selects its own k_s = max(1, round(k * n_s / n)) elements, k being k_for(n):
  // a tensor of small gradients still sends its share every step instead of waiting in the
  // residual until it outgrows the others (DGC and PowerSGD work per tensor).
  PerTensor = 1,
};

enum class OneBitScaling : std::uint8_t {
  // One value per chunk, s = ||x||_1 / n, reconstruct s * sign(x) (EF-SignSGD, DeepSpeed). This
  // is the s that minimizes ||x - s * sign(x)||_2 for the given signs, hence the choice over
  // ||x||_2 / sqrt(n).
  MeanAbs = 0,
  // Two values per chunk: the mean of the non-negative and of the negative elements (1-bit SGD,
  // Seide et al. 2014). Preserves each chunk's sum exactly (up to rounding).
  SignMeans = 1,
};

enum class QsgdNorm : std::uint8_t {
  L2 = 0,   // the paper's scaling: level = |x| / ||x||_2 * s
  Max = 1,  // level = |x| / max|x| * s: lower variance at the same bits, still unbiased
};

}  // namespace frugal::compression

namespace frugal {

template <>
struct EnumNames<compression::NonFinitePolicy> {
  using E = compression::NonFinitePolicy;
  static constexpr std::array<EnumName<E>, 2> table{{{E::Error, "error"}, {E::Flag, "flag"}}};
};

template <>
struct EnumNames<compression::TopKSelection> {
  using E = compression::TopKSelection;
  static constexpr std::array<EnumName<E>, 2> table{{{E::Exact, "exact"}, {E::Sampled, "sampled"}}};
};

template <>
struct EnumNames<compression::TopKValues> {
  using E = compression::TopKValues;
  static constexpr std::array<EnumName<E>, 2> table{{{E::Fp32, "fp32"}, {E::Fp16, "fp16"}}};
};

template <>
struct EnumNames<compression::TopKScope> {
  using E = compression::TopKScope;
  static constexpr std::array<EnumName<E>, 2> table{
      {{E::Global, "global"}, {E::PerTensor, "per_tensor"}}};
};

template <>
struct EnumNames<compression::OneBitScaling> {
  using E = compression::OneBitScaling;
  static constexpr std::array<EnumName<E>, 2> table{
      {{E::MeanAbs, "mean-abs"}, {E::SignMeans, "sign-means"}}};
};

template <>
struct EnumNames<compression::QsgdNorm> {
  using E = compression::QsgdNorm;
  static constexpr std::array<EnumName<E>, 2> table{{{E::L2, "l2"}, {E::Max, "max"}}};
};

}  // namespace frugal

namespace frugal::compression {

// Everything that defines a compressor. Senders and receivers must use equal configs; decode
// rejects payloads whose header disagrees (frugal::Error(Mismatch)).
struct CompressionConfig {
  Method method = Method::None;
  NonFinitePolicy non_finite = NonFinitePolicy::Error;

  // TopK: k = `k` if non-zero (clamped to n), else ceil(density * n) (at least 1 when n > 0).
  std::size_t k = 0;
  double density = 0.01;
  TopKSelection selection = TopKSelection::Exact;
  // Sampled top-k returns between ceil(k * (1 - tolerance)) and floor(k * (1 + tolerance))
  // elements, always including the exact top ceil(k * (1 - tolerance)).
  double tolerance = 0.2;
  TopKValues values = TopKValues::Fp32;
  // Top-k over a buffer of several segments: one global selection or one per segment. Read by
  // the compressed allreduce (a Compressor encodes one span and always selects globally).
  TopKScope topk_scope = TopKScope::Global;
  // gTop-k: the compressed allreduce cuts the sum back to the k largest magnitudes at every step
  // of its sparse recursive doubling, so each rank sends O(k log P) rather than O(k P); what a
  // cut drops returns to the error-feedback residual of the ranks that sent it. The result is
  // then not the sum of the ranks' selections but its top k. Read by the compressed allreduce
  // (algorithm sparse_rd or auto) only.
  bool gtopk = false;

  OneBitScaling scaling = OneBitScaling::MeanAbs;
  // OneBit chunk / Ternary bucket / QSGD bucket size; 0 picks the method's default (kDefault*).
  // A multiple of 8 below 2^31.
  std::size_t bucket = 0;

  // Ternary (TernGrad's gradient clipping): each bucket's scale is min(max|x|, clip_sigma * σ),
  // σ the bucket's root mean square, and values beyond it are sent as ±scale. A large outlier
  // then no longer sets a scale that leaves every other element of its bucket a small chance
  // of being sent at all. Clipping biases the few clipped elements (error feedback carries what
  // they lose). 0: no clipping (scale = max|x|). Finite and >= 0. The default is measured
  // (docs/trainer.md, "Defaults"): 2.5, TernGrad's.
  float clip_sigma = 2.5f;

  int bits = 4;  // QSGD: 2, 4 or 8 bits per level, s = 2^bits - 1
  // Max by default: with a 512-element bucket the L2 norm puts most elements in the lowest
  // levels (4 bits: 62% relative error on Gaussian data vs 9% with max; docs/trainer.md).
  QsgdNorm norm = QsgdNorm::Max;

  bool stochastic_rounding = false;  // Bf16: round stochastically (unbiased) instead of RNE
};

inline constexpr std::size_t kDefaultOneBitChunk = 4096;
inline constexpr std::size_t kDefaultTernaryBucket = 512;
inline constexpr std::size_t kDefaultQsgdBucket = 512;

// A stateless compressor for one method and configuration.
//
// Thread safety: all member functions are const and may be called concurrently from any number
// of threads on distinct buffers (each caller brings its own Rng).
// Buffers: always owned by the caller; spans may be unaligned and of any length; input and
// output must not overlap.
class Compressor {
 public:
  virtual ~Compressor() = default;

  const CompressionConfig& config() const noexcept { return config_; }
  Method method() const noexcept { return config_.method; }

  // Whether E[decode(encode(x))] = x over the randomness (unclipped ternary, QSGD, bf16 with
  // stochastic rounding, none). Biased methods need error feedback.
  bool unbiased() const noexcept;

  // Top-k only: the number of selected elements for n inputs (exact selection), or the nominal
  // k the sampled selection aims at. 0 for other methods.
  std::size_t k_for(std::size_t n) const noexcept;

  // The largest payload encode can produce for n elements, header included. Receivers size
  // their buffers with it.
  virtual std::size_t max_encoded_bytes(std::size_t n) const noexcept = 0;

  // The exact payload size for n elements, when it depends on n only (every method except
  // top-k, whose coded indices take as many bytes as where they are requires).
  virtual std::optional<std::size_t> encoded_bytes(std::size_t n) const noexcept = 0;

  // Encodes `input` into the start of `out` and returns the bytes written. Draws the random
  // positions [rng.offset(), rng.offset() + n) and advances rng by n.
  // Throws frugal::Error(InvalidArgument) if out is smaller than max_encoded_bytes(n), if n
  // exceeds the format (top-k indices are 32-bit), or on NaN/Inf under NonFinitePolicy::Error.
  std::size_t encode(std::span<const float> input, std::span<std::byte> out, Rng& rng) const;

  // encode, then write into `applied` what the receiver will reconstruct from the payload,
  // which is what ErrorFeedback::absorb needs. `applied` must have n elements and may alias
  // `input` (it is written after the encode is complete).
  std::size_t encode_apply(std::span<const float> input, std::span<std::byte> out, Rng& rng,
                           std::span<float> applied) const;

  // Reconstructs the payload into `out` (decode) or adds it to `out` (decode_add, for
  // reductions). `payload` must be exactly one payload: its length must equal the size its
  // header implies.
  // Throws frugal::Error(InvalidArgument) on a malformed, truncated, over-long or corrupt
  // payload (bad magic or version, indices out of range or not increasing, non-finite scales or
  // values without the non-finite flag), and frugal::Error(Mismatch) when the payload was made
  // by a different configuration or for a different element count than out.size(). Never reads
  // or writes out of bounds; on error `out` may be partly written.
  void decode(std::span<const std::byte> payload, std::span<float> out) const;
  void decode_add(std::span<const std::byte> payload, std::span<float> out) const;

  // out = the sum of the payloads' reconstructions, bit for bit what filling `out` with 0 and
  // calling decode_add with each payload in turn computes (every element adds them in the same
  // order), with the same checks. Methods with independent ranges (all but top-k) do it in one
  // pass over `out`, adding every payload to a cache-sized block before moving on, instead of
  // reading and writing `out` once per payload. `divisor` other than 1: every element of the sum
  // is then divided by it (x / divisor, as an average computes it) while its block is in cache.
  // Throws what decode throws; every payload's header (and scales) are checked before `out` is
  // written; on error `out` may be partly written.
  void decode_sum(std::span<const std::span<const std::byte>> payloads, std::span<float> out,
                  float divisor = 1.0f) const;

  // A magnitude up to which encode never sets kNonFinite: an input of finite elements with
  // |x| <= this encodes unflagged (no fp16/bf16 overflow, no overflowing norm or scale sum).
  // encode_with_feedback checks it per block inside its single pass under NonFinitePolicy::Error
  // (a flagged block rolls the residual back), and the compressed allreduce checks it on every
  // rank ahead of the encode, so that an out-of-range input is refused by every rank alike. 0 means
  // no such promise (only NaN and Inf flag).
  virtual float flag_free_magnitude() const noexcept { return 0.0f; }

 protected:
  explicit Compressor(const CompressionConfig& config) : config_(config) {}

  // The method's kernels. `out` holds at least max_encoded_bytes(n) - kSize bytes; the body
  // sets header fields it owns (k, flags) and returns the body size.
  virtual std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng& rng,
                                  PayloadHeader& header) const = 0;
  // `header` has passed check_header for out.size(); `body` is the rest of the payload.
  virtual void decode_body(const PayloadHeader& header, std::span<const std::byte> body,
                           std::span<float> out, bool add) const = 0;
  // Fills the method's fields of a header for n elements (variant, bucket, bits).
  virtual void fill_header(PayloadHeader& header) const noexcept = 0;
  // The header an encode of n elements into `out` starts from; InvalidArgument naming `out` if
  // it is smaller than max_encoded_bytes(n).
  PayloadHeader start_payload(std::size_t n, std::span<const std::byte> out) const;
  // The body size a validated header implies; payloads of any other size are rejected.
  virtual std::size_t body_bytes(const PayloadHeader& header) const noexcept = 0;
  // Method-specific checks of a received header beyond method/variant/bucket/bits/count (e.g.
  // top-k's k range); throws frugal::Error.
  virtual void check_header_extra(const PayloadHeader& header) const;

  // Ranges, for encode_with_feedback's cache-blocked path: a method whose payload splits into
  // independent pieces (its buckets, or single elements) returns the granule, in elements (a
  // multiple of 8); 0 (the default) means the payload only exists whole (top-k).
  virtual std::size_t range_granule() const noexcept { return 0; }
  // Encodes elements [begin, begin + x.size()) of an n-element input (x holds exactly those) into
  // their places in `body` (sized for n), with the random positions encode would give them;
  // returns whether the range holds a non-finite value in the sense of kNonFinite. `begin` is a
  // multiple of range_granule(), and the range ends at n or at a multiple of it. Encoding every
  // such range of a partition of [0, n) writes the body encode writes, byte for byte.
  virtual bool encode_range(std::span<const float> x, std::size_t n, std::size_t begin,
                            std::span<std::byte> body, const Rng& rng) const;
  // Reconstructs elements [begin, begin + out.size()) from a body made for n elements, as decode
  // would (no validation: the body is this process's own, fresh from encode_range).
  virtual void decode_range(std::span<const std::byte> body, std::size_t n, std::size_t begin,
                            std::span<float> out) const;
  // decode_sum's pieces, for the methods with ranges. check_body: decode's checks of a body that
  // need no element decoded (scales, norms); throws as decode does. decode_range_add: adds
  // elements [begin, begin + out.size()) of a body that has passed check_header and check_body to
  // `out`, as decode_add would (same ranges as decode_range), and throws as decode does on a
  // NaN/Inf element in a payload that does not flag it (fp16, bf16, none).
  virtual void check_body(const PayloadHeader& header, std::span<const std::byte> body) const;
  virtual void decode_range_add(const PayloadHeader& header, std::span<const std::byte> body,
                                std::size_t begin, std::span<float> out) const;
  CompressionConfig config_;

 private:
  friend struct FeedbackEncoder;  // error_feedback.cpp: the fused pass uses the ranges

  void decode_impl(std::span<const std::byte> payload, std::span<float> out, bool add) const;
  // decode's checks of a payload's header and length for n elements; returns the header.
  PayloadHeader check_header(std::span<const std::byte> payload, std::size_t n) const;
};

// Validates `config` and builds its compressor.
// Throws frugal::Error(InvalidArgument) naming the offending field (e.g. bits not in {2,4,8},
// bucket not a positive multiple of 8, density outside (0, 1], tolerance outside [0, 1)).
std::unique_ptr<Compressor> make_compressor(const CompressionConfig& config);

// Whether training with `method` should use DGC's momentum correction (each rank compresses its
// own momentum velocity instead of its gradient) when the optimizer has momentum: the default of
// frugal-train and of frugal.torch.DistributedOptimizer, one answer for both. Yes for top-k and
// 1-bit, whose error feedback then carries smooth velocities (measured: docs/trainer.md,
// "Defaults and why"); no for the stochastic quantizers, whose noise grows with what they
// quantize (the velocity is ~1/(1 - momentum) times the gradient) and which lost accuracy with
// it; no for the float formats, which lose too little to need it.
bool momentum_correction_by_default(Method method) noexcept;

}  // namespace frugal::compression
