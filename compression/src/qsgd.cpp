// Method::Qsgd (Alistarh et al. 2017): per bucket a norm (L2, or max for lower variance), s =
// 2^bits - 1 levels, and stochastic rounding of |x| / norm * s to the neighbouring levels, which
// makes the quantizer unbiased with E||Q(x) - x||^2 <= min(n / s^2, sqrt(n) / s) ||x||^2 (L2).
// Planes per bucket: sign bits, then `bits`-bit levels.

#include <bit>
#include <cmath>
#include <limits>
#include <type_traits>

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

// What qsgd_decode gives back for level q of the element v: float(q) * step, negated where v's
// sign bit is set. Flipping the sign bit is what the decoder's negation compiles to, so the
// reconstruction written while encoding is bit-identical to decoding the payload.
FRUGAL_INLINE f32x8 qsgd_value(f32x8 v, u32x8 q, f32x8 step) {
  const f32x8 mag = __builtin_convertvector(reinterpret_cast<i32x8>(q), f32x8) * step;
  return float_of(bits_of(mag) ^ (bits_of(v) & 0x80000000u));
}

// The random words of RandomStream for a call whose positions cannot wrap the low 32 bits: the
// high half's term is fixed and the low halves are one vector advanced by 8 or 16 per draw, with
// no per-draw wrap test or scalar position (each cost several instructions per 16 elements in the
// AVX-512 loop). Same formula, same words.
template <class Isa>
class NoWrapStream {
 public:
  FRUGAL_INLINE NoWrapStream(const Rng& rng, std::uint64_t position)
      : k0_(rng.key_lo()),
        hi_term_(rng.key_hi() ^ (static_cast<std::uint32_t>(position >> 32) * 0x9e3779b9u)) {
    const Lanes lane = iota();
    lo_ = static_cast<std::uint32_t>(position) + lane;
  }
  // Whether the `count` positions from `position` (and the lanes computed past them, up to 32)
  // stay below the next multiple of 2^32.
  static bool fits(std::uint64_t position, std::size_t count) {
    return static_cast<std::uint64_t>(static_cast<std::uint32_t>(position)) + count + 32 <=
           (std::uint64_t{1} << 32);
  }

  FRUGAL_INLINE u32x16 next16() requires(Isa::kWide16) {
    const u32x16 r = mix32x16(mix32x16(lo_ ^ k0_) ^ hi_term_);
    lo_ += 16u;
    return r;
  }
  FRUGAL_INLINE u32x8 next() {
    u32x8 r;
    if constexpr (Isa::kWide16) {
      r = RandomStream::low(mix32x16(mix32x16(lo_ ^ k0_) ^ hi_term_));
    } else {
      r = mix32x8(mix32x8(lo_ ^ k0_) ^ hi_term_);
    }
    lo_ += 8u;
    return r;
  }
  template <class>
  FRUGAL_INLINE void next4(u32x8& a, u32x8& b, u32x8& c, u32x8& d) requires(!Isa::kWide16) {
    a = mix32x8(mix32x8(lo_ ^ k0_) ^ hi_term_);
    b = mix32x8(mix32x8((lo_ + 8u) ^ k0_) ^ hi_term_);
    c = mix32x8(mix32x8((lo_ + 16u) ^ k0_) ^ hi_term_);
    d = mix32x8(mix32x8((lo_ + 24u) ^ k0_) ^ hi_term_);
    lo_ += 32u;
  }

 private:
  using Lanes = std::conditional_t<Isa::kWide16, u32x16, u32x8>;
  static FRUGAL_INLINE Lanes iota() {
    if constexpr (Isa::kWide16) {
      return Lanes{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
    } else {
      return Lanes{0, 1, 2, 3, 4, 5, 6, 7};
    }
  }
  std::uint32_t k0_, hi_term_;
  Lanes lo_;
};

// Eight elements (`valid` of them real); with kRecon also their reconstruction into d.
template <class Isa, int bits, bool kRecon, class Stream>
FRUGAL_INLINE void qsgd_group(f32x8 v, f32x8 scale, f32x8 levels, f32x8 step, Stream& random,
                              std::byte* signs, std::byte* packed, float* d, std::size_t valid) {
  const u32x8 q = qsgd_levels<Isa>(v, scale, levels, random.next());
  *signs = static_cast<std::byte>(Isa::movemask(bits_of(v)));
  pack_levels<bits>(q, packed);
  if constexpr (kRecon) {
    const f32x8 y = qsgd_value(v, q, step);
    std::memcpy(d, &y, 4 * valid);
  }
}

// 32 elements: four groups, signs as one 32-bit word, levels packed together.
template <int bits, bool kRecon, class Isa, class Stream>
FRUGAL_INLINE void qsgd_block(Isa, const float* x, f32x8 scale, f32x8 levels, f32x8 step,
                              Stream& random, std::byte* signs, std::byte* packed, float* d) {
  // Signs first: the byte store may alias x, so the compiler reloads the inputs from L1 for the
  // levels instead of holding all four across the random draws (with 16 AVX2 registers it
  // spilled them, and more).
  const std::uint32_t s = Isa::movemask32(bits_of(load8(x)), bits_of(load8(x + 8)),
                                          bits_of(load8(x + 16)), bits_of(load8(x + 24)));
  std::memcpy(signs, &s, 4);
  u32x8 r0, r1, r2, r3;
  random.template next4<Isa>(r0, r1, r2, r3);
  const u32x8 q0 = qsgd_levels<Isa>(load8(x), scale, levels, r0);
  const u32x8 q1 = qsgd_levels<Isa>(load8(x + 8), scale, levels, r1);
  const u32x8 q2 = qsgd_levels<Isa>(load8(x + 16), scale, levels, r2);
  const u32x8 q3 = qsgd_levels<Isa>(load8(x + 24), scale, levels, r3);
  pack_levels32<bits>(Isa{}, q0, q1, q2, q3, packed);
  if constexpr (kRecon) {
    store8(d, qsgd_value(load8(x), q0, step));
    store8(d + 8, qsgd_value(load8(x + 8), q1, step));
    store8(d + 16, qsgd_value(load8(x + 16), q2, step));
    store8(d + 24, qsgd_value(load8(x + 24), q3, step));
  }
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

// qsgd_value on 16 lanes.
FRUGAL_AVX512 inline f32x16 qsgd_value16(f32x16 v, u32x16 q, float step) {
  const f32x16 mag = __builtin_convertvector(reinterpret_cast<i32x16>(q), f32x16) * step;
  return reinterpret_cast<f32x16>(reinterpret_cast<u32x16>(mag) ^
                                  (reinterpret_cast<u32x16>(v) & 0x80000000u));
}

// 32 elements as two 16-lane halves; levels narrowed with VPMOVDB.
template <int bits, bool kRecon, class Stream>
FRUGAL_AVX512 inline void qsgd_block(Avx512, const float* x, f32x8 scale, f32x8 levels, f32x8 step,
                                     Stream& random, std::byte* signs, std::byte* packed,
                                     float* d) {
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
  if constexpr (kRecon) {
    const f32x16 y01 = qsgd_value16(v01, q01, step[0]);
    const f32x16 y23 = qsgd_value16(v23, q23, step[0]);
    std::memcpy(d, &y01, sizeof y01);
    std::memcpy(d + 16, &y23, sizeof y23);
  }
}
#endif

// The running norm of one bucket. L2: lane l accumulates the squares of elements l, l + 8, ...
// in order (so the result does not depend on how the reduction is scheduled). A NaN/Inf element
// makes the norm NaN. The L2 norm does not test elements as it goes: a NaN or Inf input always
// leaves the sum of squares non-finite, so only a non-finite sum (rare: such input, or squares
// overflowing) re-reads the bucket to tell the two apart.
template <bool max_norm>
struct NormAccumulator {
  f32x8 acc{};

  FRUGAL_INLINE void add(f32x8 v) { acc += v * v; }
  // Elements [from, len) of the bucket at x; `from` is a multiple of 8.
  FRUGAL_INLINE void add_range(const float* x, std::size_t from, std::size_t len) {
    std::size_t i = from;
    for (; i + kLanes <= len; i += kLanes) add(load8(x + i));
    if (i < len) add(load_partial(x + i, len - i));
  }
  // The norm of the `len` elements at x that were added.
  FRUGAL_INLINE float norm(const float* x, std::size_t len) const {
    const float norm = std::sqrt(hsum(acc));
    if (std::isfinite(norm)) [[likely]] {
      return norm;
    }
    u32x8 nonfinite{};
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes) nonfinite |= nonfinite_lanes(load8(x + i));
    if (i < len) nonfinite |= nonfinite_lanes(load_partial(x + i, len - i));
    return any(nonfinite) ? std::numeric_limits<float>::quiet_NaN() : norm;  // else +Inf
  }
};

// The max norm on the bit patterns of |x|: for non-negative floats unsigned order is numeric
// order and every NaN/Inf pattern lies at or above Inf's, so one integer max per vector finds the
// largest magnitude and whether any element is non-finite (two operations where the float
// maximum plus a separate non-finite test took five). Max is exact, so the order is free.
template <>
struct NormAccumulator<true> {
  u32x8 acc{};

  FRUGAL_INLINE void add(f32x8 v) {
    const u32x8 key = bits_of(v) & 0x7fffffffu;
    acc = acc > key ? acc : key;
  }
  FRUGAL_INLINE void add_range(const float* x, std::size_t from, std::size_t len) {
    std::size_t i = from;
    for (; i + kLanes <= len; i += kLanes) add(load8(x + i));
    if (i < len) add(load_partial(x + i, len - i));
  }
  FRUGAL_INLINE float norm(const float*, std::size_t) const {
    std::uint32_t m = acc[0];
    for (std::size_t i = 1; i < kLanes; ++i) m = acc[i] > m ? acc[i] : m;
    return m >= 0x7f800000u ? std::numeric_limits<float>::quiet_NaN() : std::bit_cast<float>(m);
  }
};

// One pass over the input: while bucket b is quantized (from L1), the norm of bucket b + 1 is
// accumulated from the stream, so its loads and its addition chain overlap with the
// quantization instead of stalling a separate pass. With kRecon the reconstruction (what
// decoding the payload gives) goes to `recon` as well, so error feedback needs no decode pass.
template <class Isa, int bits, bool max_norm, bool kRecon, class Stream>
void qsgd_encode_bits(const float* in, std::size_t n, std::size_t bucket, Stream random,
                      std::byte* norms, std::byte* signs, std::byte* levels_out, float* recon,
                      const PrefetchHint& next_block) {
  const PrefetchHint pf = next_block;  // a copy: the output stores might alias the reference
  const f32x8 levels = splat(static_cast<float>((1u << bits) - 1u));
  const std::size_t group_bytes = static_cast<std::size_t>(bits);
  // Buckets are multiples of 8, so groups are visited at consecutive positions.
  NormAccumulator<max_norm> current;
  current.add_range(in, 0, n < bucket ? n : bucket);
  for (std::size_t b0 = 0, b = 0; b0 < n; b0 += bucket, ++b) {
    const std::size_t len = n - b0 < bucket ? n - b0 : bucket;
    const float* x = in + b0;
    const float norm = current.norm(x, len);
    store_f32(norms + 4 * b, norm);
    const f32x8 scale = splat(norm > 0.0f && std::isfinite(norm) ? levels[0] / norm : 0.0f);
    // The decoder's step, from the norm as stored.
    const f32x8 step = splat(norm / levels[0]);
    // The next bucket (empty after the last).
    const std::size_t rest = n - b0 - len;
    const std::size_t next_len = rest < bucket ? rest : bucket;
    const float* next_x = x + len;
    NormAccumulator<max_norm> next;
    std::size_t next_done = 0;

    std::byte* sp = signs + b0 / 8;
    std::byte* lp = levels_out + b0 / 8 * group_bytes;
    float* d = kRecon ? recon + b0 : nullptr;
    std::size_t i = 0;
    for (; i + 4 * kLanes <= len; i += 4 * kLanes) {
      qsgd_block<bits, kRecon>(Isa{}, x + i, scale, levels, step, random, sp + i / 8,
                               lp + i / 8 * group_bytes, kRecon ? d + i : nullptr);
      if (b0 + i < pf.len) {  // two lines of each range per 32 elements: all of them by the end
        __builtin_prefetch(pf.a + b0 + i, 0, 2);
        __builtin_prefetch(pf.a + b0 + i + 16, 0, 2);
        __builtin_prefetch(pf.b + b0 + i, 0, 2);
        __builtin_prefetch(pf.b + b0 + i + 16, 0, 2);
      }
      if (i + 4 * kLanes <= next_len) {
        next.add(load8(next_x + i));
        next.add(load8(next_x + i + 8));
        next.add(load8(next_x + i + 16));
        next.add(load8(next_x + i + 24));
        next_done = i + 4 * kLanes;
      }
    }
    for (; i + kLanes <= len; i += kLanes) {
      qsgd_group<Isa, bits, kRecon>(load8(x + i), scale, levels, step, random, sp + i / 8,
                                    lp + i / 8 * group_bytes, kRecon ? d + i : nullptr, kLanes);
    }
    if (i < len) {
      std::byte tmp[8];
      qsgd_group<Isa, bits, kRecon>(load_partial(x + i, len - i), scale, levels, step, random,
                                    sp + i / 8, tmp, kRecon ? d + i : nullptr, len - i);
      std::memcpy(lp + i / 8 * group_bytes, tmp, ceil_div((len - i) * group_bytes, 8));
    }
    next.add_range(next_x, next_done, next_len);
    current = next;
  }
}
template <class Isa, int bits, bool max_norm>
void qsgd_encode_stream(const float* in, std::size_t n, std::size_t bucket, const Rng& rng,
                        std::uint64_t offset, std::byte* norms, std::byte* signs,
                        std::byte* levels_out, float* recon, const PrefetchHint& pf) {
  // The random positions run from offset to below offset + n + 8.
  if (NoWrapStream<Isa>::fits(offset, n)) {
    const NoWrapStream<Isa> random(rng, offset);
    if (recon != nullptr) {
      qsgd_encode_bits<Isa, bits, max_norm, true>(in, n, bucket, random, norms, signs, levels_out,
                                                  recon, pf);
    } else {
      qsgd_encode_bits<Isa, bits, max_norm, false>(in, n, bucket, random, norms, signs, levels_out,
                                                   recon, pf);
    }
  } else {
    const RandomStream random(rng, offset);
    if (recon != nullptr) {
      qsgd_encode_bits<Isa, bits, max_norm, true>(in, n, bucket, random, norms, signs, levels_out,
                                                  recon, pf);
    } else {
      qsgd_encode_bits<Isa, bits, max_norm, false>(in, n, bucket, random, norms, signs, levels_out,
                                                   recon, pf);
    }
  }
}
template <class Isa, int bits>
void qsgd_encode_norm(const float* in, std::size_t n, std::size_t bucket, bool max_norm,
                      const Rng& rng, std::uint64_t offset, std::byte* norms, std::byte* signs,
                      std::byte* levels_out, float* recon, const PrefetchHint& pf) {
  if (max_norm) {
    qsgd_encode_stream<Isa, bits, true>(in, n, bucket, rng, offset, norms, signs, levels_out, recon,
                                        pf);
  } else {
    qsgd_encode_stream<Isa, bits, false>(in, n, bucket, rng, offset, norms, signs, levels_out,
                                         recon, pf);
  }
}
// `recon`: null, or n floats that receive the reconstruction.
template <class Isa>
void qsgd_encode(const float* in, std::size_t n, std::size_t bucket, int bits, bool max_norm,
                 const Rng& rng, std::uint64_t offset, std::byte* norms, std::byte* signs,
                 std::byte* levels_out, float* recon, const PrefetchHint& pf) {
  // Bits as a template parameter: packing and unpacking then compile to fixed shifts.
  if (bits == 2) {
    qsgd_encode_norm<Isa, 2>(in, n, bucket, max_norm, rng, offset, norms, signs, levels_out, recon,
                             pf);
  } else if (bits == 4) {
    qsgd_encode_norm<Isa, 4>(in, n, bucket, max_norm, rng, offset, norms, signs, levels_out, recon,
                             pf);
  } else {
    qsgd_encode_norm<Isa, 8>(in, n, bucket, max_norm, rng, offset, norms, signs, levels_out, recon,
                             pf);
  }
}
FRUGAL_DISPATCH(qsgd_encode,
                (const float* in, std::size_t n, std::size_t bucket, int bits, bool max_norm,
                 const Rng& rng, std::uint64_t offset, std::byte* norms, std::byte* signs,
                 std::byte* levels_out, float* recon, const PrefetchHint& pf),
                (in, n, bucket, bits, max_norm, rng, offset, norms, signs, levels_out, recon, pf))

// Decodes the first elements of a bucket 16 at a time where the Isa has a 16-lane version;
// returns how many (a multiple of 16; none here).
template <int bits, class Isa>
FRUGAL_INLINE std::size_t qsgd_decode16(Isa, const std::byte*, const std::byte*, std::size_t, float,
                                        float*, bool) {
  return 0;
}

#if FRUGAL_HAVE_AVX2_KERNELS
// The decoder's operations on 16 lanes (float(level) * step, the sign bit flipped where the sign
// plane is set: what the 8-lane negation compiles to): bit-identical. The sign bits are the
// lanes' mask as they stand in the plane, and the levels are spread with one variable shift.
template <int bits>
FRUGAL_AVX512 inline std::size_t qsgd_decode16(Avx512, const std::byte* signs, const std::byte* lp,
                                               std::size_t len, float step, float* y, bool add) {
  using u8x16 = std::uint8_t __attribute__((vector_size(16)));
  const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  std::size_t i = 0;
  for (; i + 16 <= len; i += 16) {
    const std::byte* packed = lp + i / 8 * static_cast<std::size_t>(bits);
    u32x16 level;
    if constexpr (bits == 8) {
      u8x16 b;
      std::memcpy(&b, packed, sizeof b);
      level = __builtin_convertvector(b, u32x16);
    } else {
      // Element k of the 2 * bits bytes: bits [k * bits, (k + 1) * bits) of the little-endian
      // words; with 2 bits one word holds all 16, with 4 bits two words hold 8 each.
      constexpr std::uint32_t kMask = (1u << bits) - 1u;
      const u32x16 lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
      std::uint32_t w[2] = {};
      std::memcpy(w, packed, 2 * bits);
      u32x16 words;
      if constexpr (bits == 2) {
        words = u32x16{} + w[0];
      } else {
        static_assert(bits == 4);
        const u32x16 lo = u32x16{} + w[0], hi = u32x16{} + w[1];
        words = lane < 8u ? lo : hi;
      }
      level = words >> (lane * static_cast<std::uint32_t>(bits) & 31u) & kMask;
    }
    const f32x16 mag = __builtin_convertvector(reinterpret_cast<i32x16>(level), f32x16) * step;
    std::uint16_t sg;
    std::memcpy(&sg, signs + i / 8, 2);
    const __m512i m = reinterpret_cast<__m512i>(mag);
    f32x16 v = reinterpret_cast<f32x16>(_mm512_mask_xor_epi32(m, sg, m, sign_bit));
    if (add) {
      f32x16 old;
      std::memcpy(&old, y + i, sizeof old);
      v = old + v;
    }
    std::memcpy(y + i, &v, sizeof v);
  }
  return i;
}
#endif

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
    // Negation where the sign bit is set, as an XOR of that bit shifted into place: the same
    // bits as selecting -mag (which is what negation compiles to), in fewer instructions than
    // expanding the bit to a lane mask and blending.
    const u32x8 to_sign_bit = {31, 30, 29, 28, 27, 26, 25, 24};
    const auto value = [&](std::size_t i, const std::byte* packed) {
      const u32x8 sg = (u32x8{} + static_cast<std::uint32_t>(signs[(b0 + i) / 8])) << to_sign_bit;
      const i32x8 level = reinterpret_cast<i32x8>(unpack_levels<bits>(packed));
      const f32x8 mag = __builtin_convertvector(level, f32x8) * step;
      return float_of(bits_of(mag) ^ (sg & 0x80000000u));
    };
    std::size_t i = qsgd_decode16<bits>(Isa{}, signs + b0 / 8, lp, len, step, y, add);
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
                         p + nb + plane, nullptr, PrefetchHint{});
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
    return encode_range_reconstruct(x, n, begin, body, rng, nullptr, PrefetchHint{});
  }

 public:
  // encode_range, and with a non-null `d` also what decode_range would write there (error
  // feedback's fused pass: no decode of the payload just written).
  bool encode_range_reconstruct(std::span<const float> x, std::size_t n, std::size_t begin,
                                std::span<std::byte> body, const Rng& rng, float* d,
                                const PrefetchHint& next) const {
    const std::size_t bucket = config_.bucket;
    std::byte* norms = body.data() + 4 * (begin / bucket);
    qsgd_encode_dispatch(x.data(), x.size(), bucket, config_.bits, config_.norm == QsgdNorm::Max,
                         rng, rng.offset() + begin, norms, body.data() + norm_bytes(n) + begin / 8,
                         levels_at(body.data(), n, begin), d, next);
    for (std::size_t i = 0; i < 4 * ceil_div(x.size(), bucket); i += 4) {
      if (!std::isfinite(load_f32(norms + i))) return true;
    }
    return false;
  }

 protected:
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

bool qsgd_encodes_with_reconstruction(const Compressor& compressor) {
  return dynamic_cast<const QsgdCompressor*>(&compressor) != nullptr;
}

bool qsgd_encode_range_reconstruct(const Compressor& compressor, std::span<const float> x,
                                   std::size_t n, std::size_t begin, std::span<std::byte> body,
                                   const Rng& rng, float* d, const PrefetchHint& next) {
  return dynamic_cast<const QsgdCompressor&>(compressor)
      .encode_range_reconstruct(x, n, begin, body, rng, d, next);
}

}  // namespace frugal::compression
