// Method::Qsgd (Alistarh et al. 2017): per bucket a norm (L2, or max for lower variance), s =
// 2^bits - 1 levels, and stochastic rounding of |x| / norm * s to the neighbouring levels, which
// makes the quantizer unbiased with E||Q(x) - x||^2 <= min(n / s^2, sqrt(n) / s) ||x||^2 (L2).
// Planes per bucket: sign bits, then `bits`-bit levels.

#include <cmath>
#include <limits>

#include "bitpack.hpp"
#include "methods.hpp"

namespace frugal::compression {
namespace {

using namespace kernel;

// The level of each lane: floor(|x| * scale) plus a Bernoulli(fraction) draw.
template <class Isa>
FRUGAL_INLINE u32x8 qsgd_levels(f32x8 v, f32x8 scale, f32x8 levels, u32x8 random) {
  // NaN -> 0 and clamp to s (|x| / ||x||_2 * s can round a hair above s); no float-to-int
  // conversion ever sees a value out of range.
  const f32x8 level = Isa::min(Isa::max(abs8(v) * scale, f32x8{}), levels);
  // Through int32: AVX2 converts signed only, and levels are below 256.
  const i32x8 floor = __builtin_convertvector(level, i32x8);
  const f32x8 frac = level - __builtin_convertvector(floor, f32x8);
  // The comparison's all-ones lanes are -1: subtracting adds the rounding-up bit in one step.
  return reinterpret_cast<u32x8>(floor) - reinterpret_cast<u32x8>(uniform8(random) < frac);
}

template <class Isa, int bits>
FRUGAL_INLINE void qsgd_group(f32x8 v, f32x8 scale, f32x8 levels, RandomStream& random,
                              std::byte* signs, std::byte* packed) {
  const u32x8 q = qsgd_levels<Isa>(v, scale, levels, random.next());
  *signs = static_cast<std::byte>(Isa::movemask(bits_of(v)));
  pack_levels<bits>(q, packed);
}

// 32 elements: four groups, signs as one 32-bit word, levels packed together.
template <int bits, class Isa>
FRUGAL_INLINE void qsgd_block(Isa, const float* x, f32x8 scale, f32x8 levels, RandomStream& random,
                              std::byte* signs, std::byte* packed) {
  // Signs first: the byte store may alias x, so the compiler reloads the inputs from L1 for the
  // levels instead of holding all four across the random draws (with 16 AVX2 registers it
  // spilled them, and more).
  const std::uint32_t s = Isa::movemask32(bits_of(load8(x)), bits_of(load8(x + 8)),
                                          bits_of(load8(x + 16)), bits_of(load8(x + 24)));
  std::memcpy(signs, &s, 4);
  u32x8 r0, r1, r2, r3;
  random.next4<Isa>(r0, r1, r2, r3);
  const u32x8 q0 = qsgd_levels<Isa>(load8(x), scale, levels, r0);
  const u32x8 q1 = qsgd_levels<Isa>(load8(x + 8), scale, levels, r1);
  const u32x8 q2 = qsgd_levels<Isa>(load8(x + 16), scale, levels, r2);
  const u32x8 q3 = qsgd_levels<Isa>(load8(x + 24), scale, levels, r3);
  pack_levels32<bits>(Isa{}, q0, q1, q2, q3, packed);
}

#if FRUGAL_HAVE_AVX2_KERNELS
// qsgd_levels on 16 lanes, the same operations in the same order (MAXPS, MINPS, truncation,
// exact 24-bit uniform): bit-identical levels. The intrinsics are the merge-masked forms with a
// full mask: GCC 12's unmasked AVX-512 intrinsics trip -Wmaybe-uninitialized on their internal
// _mm512_undefined_* operands.
using f32x16 = float __attribute__((vector_size(64)));
using i32x16 = std::int32_t __attribute__((vector_size(64)));
FRUGAL_AVX512 inline u32x16 qsgd_levels16(f32x16 v, float scale, float levels, u32x16 random) {
  constexpr __mmask16 kAll = 0xffff;
  const f32x16 scaled = reinterpret_cast<f32x16>(reinterpret_cast<u32x16>(v) & 0x7fffffffu) * scale;
  __m512 level = reinterpret_cast<__m512>(scaled);
  level = _mm512_mask_max_ps(level, kAll, level, _mm512_setzero_ps());     // NaN -> 0
  level = _mm512_mask_min_ps(level, kAll, level, _mm512_set1_ps(levels));  // clamp to s
  const f32x16 lv = reinterpret_cast<f32x16>(level);
  const i32x16 floor = __builtin_convertvector(lv, i32x16);  // truncation
  const f32x16 frac = lv - __builtin_convertvector(floor, f32x16);
  const f32x16 u =
      __builtin_convertvector(reinterpret_cast<i32x16>(random >> 8), f32x16) * 0x1.0p-24f;
  const __mmask16 up = _mm512_mask_cmp_ps_mask(kAll, reinterpret_cast<__m512>(u),
                                               reinterpret_cast<__m512>(frac), _CMP_LT_OQ);
  const __m512i q = reinterpret_cast<__m512i>(floor);
  return reinterpret_cast<u32x16>(_mm512_mask_add_epi32(q, up, q, _mm512_set1_epi32(1)));
}

// 32 elements as two 16-lane halves; levels narrowed with VPMOVDB.
template <int bits>
FRUGAL_AVX512 inline void qsgd_block(Avx512, const float* x, f32x8 scale, f32x8 levels,
                                     RandomStream& random, std::byte* signs, std::byte* packed) {
  f32x16 v01, v23;
  std::memcpy(&v01, x, sizeof v01);
  std::memcpy(&v23, x + 16, sizeof v23);
  const u32x16 q01 = qsgd_levels16(v01, scale[0], levels[0], random.next16());
  const u32x16 q23 = qsgd_levels16(v23, scale[0], levels[0], random.next16());
  const std::uint32_t s =
      static_cast<std::uint32_t>(_mm512_movepi32_mask(reinterpret_cast<__m512i>(v01))) |
      static_cast<std::uint32_t>(_mm512_movepi32_mask(reinterpret_cast<__m512i>(v23))) << 16;
  std::memcpy(signs, &s, 4);
  pack_level_bytes<bits>(
      _mm256_set_m128i(_mm512_maskz_cvtepi32_epi8(0xffff, reinterpret_cast<__m512i>(q23)),
                       _mm512_maskz_cvtepi32_epi8(0xffff, reinterpret_cast<__m512i>(q01))),
      packed);
}
#endif

// The running norm of one bucket: lane l accumulates elements l, l + 8, ... in order (so the
// result does not depend on how the reduction is scheduled), NaN/Inf tracked separately.
// The running norm of one bucket: lane l accumulates elements l, l + 8, ... in order (so the
// result does not depend on how the reduction is scheduled). A NaN/Inf element makes the norm
// NaN. The L2 norm does not test elements as it goes: a NaN or Inf input always leaves the sum
// of squares non-finite, so only a non-finite sum (rare: such input, or squares overflowing)
// re-reads the bucket to tell the two apart. The max norm must track them (MAXPS drops NaN).
template <bool max_norm>
struct NormAccumulator {
  f32x8 acc{};
  u32x8 bad{};

  FRUGAL_INLINE void add(f32x8 v) {
    if constexpr (max_norm) {
      bad |= nonfinite_lanes(v);
      acc = max8(acc, abs8(v));
    } else {
      acc += v * v;
    }
  }
  // Elements [from, len) of the bucket at x; `from` is a multiple of 8.
  FRUGAL_INLINE void add_range(const float* x, std::size_t from, std::size_t len) {
    std::size_t i = from;
    for (; i + kLanes <= len; i += kLanes) add(load8(x + i));
    if (i < len) add(load_partial(x + i, len - i));
  }
  // The norm of the `len` elements at x that were added.
  FRUGAL_INLINE float norm(const float* x, std::size_t len) const {
    constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
    if constexpr (max_norm) {
      return any(bad) ? kNaN : hmax(acc);
    } else {
      const float norm = std::sqrt(hsum(acc));
      if (std::isfinite(norm)) [[likely]] {
        return norm;
      }
      u32x8 nonfinite{};
      std::size_t i = 0;
      for (; i + kLanes <= len; i += kLanes) nonfinite |= nonfinite_lanes(load8(x + i));
      if (i < len) nonfinite |= nonfinite_lanes(load_partial(x + i, len - i));
      return any(nonfinite) ? kNaN : norm;  // else the squares overflowed: +Inf
    }
  }
};

// One pass over the input: while bucket b is quantized (from L1), the norm of bucket b + 1 is
// accumulated from the stream, so its loads and its addition chain overlap with the
// quantization instead of stalling a separate pass.
template <class Isa, int bits, bool max_norm>
void qsgd_encode_bits(const float* in, std::size_t n, std::size_t bucket, const Rng& rng,
                      std::uint64_t offset, std::byte* norms, std::byte* signs,
                      std::byte* levels_out) {
  const f32x8 levels = splat(static_cast<float>((1u << bits) - 1u));
  const std::size_t group_bytes = static_cast<std::size_t>(bits);
  // Buckets are multiples of 8, so groups are visited at consecutive positions.
  RandomStream random(rng, offset);
  NormAccumulator<max_norm> current;
  current.add_range(in, 0, n < bucket ? n : bucket);
  for (std::size_t b0 = 0, b = 0; b0 < n; b0 += bucket, ++b) {
    const std::size_t len = n - b0 < bucket ? n - b0 : bucket;
    const float* x = in + b0;
    const float norm = current.norm(x, len);
    store_f32(norms + 4 * b, norm);
    const f32x8 scale = splat(norm > 0.0f && std::isfinite(norm) ? levels[0] / norm : 0.0f);
    // The next bucket (empty after the last).
    const std::size_t rest = n - b0 - len;
    const std::size_t next_len = rest < bucket ? rest : bucket;
    const float* next_x = x + len;
    NormAccumulator<max_norm> next;
    std::size_t next_done = 0;

    std::byte* sp = signs + b0 / 8;
    std::byte* lp = levels_out + b0 / 8 * group_bytes;
    std::size_t i = 0;
    for (; i + 4 * kLanes <= len; i += 4 * kLanes) {
      qsgd_block<bits>(Isa{}, x + i, scale, levels, random, sp + i / 8, lp + i / 8 * group_bytes);
      if (i + 4 * kLanes <= next_len) {
        next.add(load8(next_x + i));
        next.add(load8(next_x + i + 8));
        next.add(load8(next_x + i + 16));
        next.add(load8(next_x + i + 24));
        next_done = i + 4 * kLanes;
      }
    }
    for (; i + kLanes <= len; i += kLanes) {
      qsgd_group<Isa, bits>(load8(x + i), scale, levels, random, sp + i / 8,
                            lp + i / 8 * group_bytes);
    }
    if (i < len) {
      std::byte tmp[8];
      qsgd_group<Isa, bits>(load_partial(x + i, len - i), scale, levels, random, sp + i / 8, tmp);
      std::memcpy(lp + i / 8 * group_bytes, tmp, ceil_div((len - i) * group_bytes, 8));
    }
    next.add_range(next_x, next_done, next_len);
    current = next;
  }
}
template <class Isa, int bits>
void qsgd_encode_norm(const float* in, std::size_t n, std::size_t bucket, bool max_norm,
                      const Rng& rng, std::uint64_t offset, std::byte* norms, std::byte* signs,
                      std::byte* levels_out) {
  if (max_norm) {
    qsgd_encode_bits<Isa, bits, true>(in, n, bucket, rng, offset, norms, signs, levels_out);
  } else {
    qsgd_encode_bits<Isa, bits, false>(in, n, bucket, rng, offset, norms, signs, levels_out);
  }
}
template <class Isa>
void qsgd_encode(const float* in, std::size_t n, std::size_t bucket, int bits, bool max_norm,
                 const Rng& rng, std::uint64_t offset, std::byte* norms, std::byte* signs,
                 std::byte* levels_out) {
  // Bits as a template parameter: packing and unpacking then compile to fixed shifts.
  if (bits == 2) {
    qsgd_encode_norm<Isa, 2>(in, n, bucket, max_norm, rng, offset, norms, signs, levels_out);
  } else if (bits == 4) {
    qsgd_encode_norm<Isa, 4>(in, n, bucket, max_norm, rng, offset, norms, signs, levels_out);
  } else {
    qsgd_encode_norm<Isa, 8>(in, n, bucket, max_norm, rng, offset, norms, signs, levels_out);
  }
}
FRUGAL_DISPATCH(qsgd_encode,
                (const float* in, std::size_t n, std::size_t bucket, int bits, bool max_norm,
                 const Rng& rng, std::uint64_t offset, std::byte* norms, std::byte* signs,
                 std::byte* levels_out),
                (in, n, bucket, bits, max_norm, rng, offset, norms, signs, levels_out))

template <class Isa, int bits>
void qsgd_decode_bits(const std::byte* norms, const std::byte* signs, const std::byte* levels_in,
                      std::size_t n, std::size_t bucket, float* out, bool add) {
  const float levels = static_cast<float>((1u << bits) - 1u);
  const std::size_t group_bytes = static_cast<std::size_t>(bits);
  for (std::size_t b0 = 0, b = 0; b0 < n; b0 += bucket, ++b) {
    const std::size_t len = n - b0 < bucket ? n - b0 : bucket;
    const float step = load_f32(norms + 4 * b) / levels;
    float* y = out + b0;
    const std::byte* lp = levels_in + b0 / 8 * group_bytes;
    const auto value = [&](std::size_t i, const std::byte* packed) {
      const u32x8 sg = expand_bits(static_cast<std::uint32_t>(signs[(b0 + i) / 8]));
      const i32x8 level = reinterpret_cast<i32x8>(unpack_levels<bits>(packed));
      const f32x8 mag = __builtin_convertvector(level, f32x8) * step;
      return sg != 0u ? -mag : mag;
    };
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      const f32x8 v = value(i, lp + i / 8 * group_bytes);
      store8(y + i, add ? load8(y + i) + v : v);
    }
    if (i < len) {
      std::byte tmp[8] = {};
      std::memcpy(tmp, lp + i / 8 * group_bytes, ceil_div((len - i) * group_bytes, 8));
      f32x8 v = value(i, tmp);
      if (add) v += load_partial(y + i, len - i);
      std::memcpy(y + i, &v, 4 * (len - i));
    }
  }
}
template <class Isa>
void qsgd_decode(const std::byte* norms, const std::byte* signs, const std::byte* levels_in,
                 std::size_t n, std::size_t bucket, int bits, float* out, bool add) {
  if (bits == 2) {
    qsgd_decode_bits<Isa, 2>(norms, signs, levels_in, n, bucket, out, add);
  } else if (bits == 4) {
    qsgd_decode_bits<Isa, 4>(norms, signs, levels_in, n, bucket, out, add);
  } else {
    qsgd_decode_bits<Isa, 8>(norms, signs, levels_in, n, bucket, out, add);
  }
}
FRUGAL_DISPATCH(qsgd_decode,
                (const std::byte* norms, const std::byte* signs, const std::byte* levels_in,
                 std::size_t n, std::size_t bucket, int bits, float* out, bool add),
                (norms, signs, levels_in, n, bucket, bits, out, add))

class QsgdCompressor final : public Compressor {
 public:
  explicit QsgdCompressor(const CompressionConfig& config) : Compressor(config) {}

  std::size_t max_encoded_bytes(std::size_t n) const noexcept override {
    return PayloadHeader::kSize + norm_bytes(n) + ceil_div(n, 8) + level_bytes(n);
  }
  std::optional<std::size_t> encoded_bytes(std::size_t n) const noexcept override {
    return max_encoded_bytes(n);
  }

 protected:
  void fill_header(PayloadHeader& h) const noexcept override {
    h.variant = static_cast<std::uint8_t>(config_.norm);
    h.bucket = static_cast<std::uint32_t>(config_.bucket);
    h.bits = static_cast<std::uint32_t>(config_.bits);
  }
  std::size_t body_bytes(const PayloadHeader& h) const noexcept override {
    return max_encoded_bytes(h.count) - PayloadHeader::kSize;
  }

  std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng& rng,
                          PayloadHeader& header) const override {
    const std::size_t n = input.size();
    const std::size_t nb = norm_bytes(n);
    const std::size_t plane = ceil_div(n, 8);
    std::byte* p = body.data();
    qsgd_encode_dispatch(input.data(), n, config_.bucket, config_.bits,
                         config_.norm == QsgdNorm::Max, rng, rng.offset(), p, p + nb,
                         p + nb + plane);
    for (std::size_t i = 0; i < nb; i += 4) {
      if (!std::isfinite(load_f32(p + i))) {
        header.flags |= PayloadHeader::kNonFinite;
        break;
      }
    }
    return nb + plane + level_bytes(n);
  }

  void decode_body(const PayloadHeader& h, std::span<const std::byte> body, std::span<float> out,
                   bool add) const override {
    const std::size_t n = out.size();
    const std::size_t nb = norm_bytes(n);
    const std::size_t plane = ceil_div(n, 8);
    check_body(h, body);
    const std::byte* p = body.data();
    qsgd_decode_dispatch(p, p + nb, p + nb + plane, n, config_.bucket, config_.bits, out.data(),
                         add);
  }

  void check_body(const PayloadHeader& h, std::span<const std::byte> body) const override {
    check_scales(body.first(norm_bytes(h.count)), h.non_finite(), true, "QSGD norm");
  }

  void decode_range_add(const PayloadHeader& h, std::span<const std::byte> body, std::size_t begin,
                        std::span<float> out) const override {
    const std::byte* p = body.data();
    qsgd_decode_dispatch(p + 4 * (begin / config_.bucket), p + norm_bytes(h.count) + begin / 8,
                         levels_at(p, h.count, begin), out.size(), config_.bucket, config_.bits,
                         out.data(), true);
  }

  std::size_t range_granule() const noexcept override { return config_.bucket; }
  // Max norm: finite whenever the input is. L2: a bucket's sum of squares stays below FLT_MAX / 2.
  float flag_free_magnitude() const noexcept override {
    if (config_.norm == QsgdNorm::Max) return std::numeric_limits<float>::max();
    return std::sqrt(std::numeric_limits<float>::max() /
                     (2.0f * static_cast<float>(config_.bucket)));
  }

  bool encode_range(std::span<const float> x, std::size_t n, std::size_t begin,
                    std::span<std::byte> body, const Rng& rng) const override {
    const std::size_t bucket = config_.bucket;
    std::byte* norms = body.data() + 4 * (begin / bucket);
    qsgd_encode_dispatch(x.data(), x.size(), bucket, config_.bits, config_.norm == QsgdNorm::Max,
                         rng, rng.offset() + begin, norms, body.data() + norm_bytes(n) + begin / 8,
                         levels_at(body.data(), n, begin));
    for (std::size_t i = 0; i < 4 * ceil_div(x.size(), bucket); i += 4) {
      if (!std::isfinite(load_f32(norms + i))) return true;
    }
    return false;
  }

  void decode_range(std::span<const std::byte> body, std::size_t n, std::size_t begin,
                    std::span<float> out) const override {
    const std::byte* p = body.data();
    qsgd_decode_dispatch(p + 4 * (begin / config_.bucket), p + norm_bytes(n) + begin / 8,
                         levels_at(p, n, begin), out.size(), config_.bucket, config_.bits,
                         out.data(), false);
  }

 private:
  // Where element `begin`'s levels start in a body for n elements (begin a multiple of 8).
  template <class Byte>
  Byte* levels_at(Byte* body, std::size_t n, std::size_t begin) const noexcept {
    return body + norm_bytes(n) + ceil_div(n, 8) +
           begin / 8 * static_cast<std::size_t>(config_.bits);
  }
  std::size_t norm_bytes(std::size_t n) const noexcept { return 4 * ceil_div(n, config_.bucket); }
  std::size_t level_bytes(std::size_t n) const noexcept {
    return ceil_div(n * static_cast<std::size_t>(config_.bits), 8);
  }
};

}  // namespace

std::unique_ptr<Compressor> make_qsgd_compressor(const CompressionConfig& config) {
  return std::make_unique<QsgdCompressor>(config);
}

}  // namespace frugal::compression
