#pragma once

// Internal to compression/: the vocabulary the kernels are written in.
//
// Kernels are templates over an instruction-set tag and process 8 lanes at a time with GCC
// vector extensions (16 for the random draws). The same source is instantiated three times: in
// an AVX-512 function and an AVX2+F16C function (target attribute + flatten, so everything they
// call is compiled for that target and inlined) and for the baseline. Lane arithmetic is identical
// in all three, so payloads are bit-identical whatever the CPU; tests compare every level this
// CPU runs, and against one-element-at-a-time reference encoders. Only the few primitives vector
// extensions cannot express (movemask, packing, compress, fp16 conversion) differ, behind the Isa
// tag (overloads on it: Avx512 falls back to the Avx2 version where it has none of its own).

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "frugal/compression/payload.hpp"
#include "frugal/compression/rng.hpp"
#include "frugal/compression/simd.hpp"
#include "frugal/error.hpp"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define FRUGAL_HAVE_AVX2_KERNELS 1
#include <immintrin.h>
#else
#define FRUGAL_HAVE_AVX2_KERNELS 0
#endif

// Vectors of 32 bytes are passed by value between always-inlined helpers only; the ABI note GCC
// emits for them concerns calls that never happen.
#pragma GCC diagnostic ignored "-Wpsabi"

static_assert(std::endian::native == std::endian::little,
              "payloads are little-endian and read with memcpy");

namespace frugal::compression::kernel {

#define FRUGAL_INLINE __attribute__((always_inline)) inline

using f32x8 = float __attribute__((vector_size(32)));
using i32x8 = std::int32_t __attribute__((vector_size(32)));
using u32x8 = std::uint32_t __attribute__((vector_size(32)));
using u64x4 = std::uint64_t __attribute__((vector_size(32)));
using u16x8 = std::uint16_t __attribute__((vector_size(16)));
using u32x16 = std::uint32_t __attribute__((vector_size(64)));

inline constexpr std::size_t kLanes = 8;

FRUGAL_INLINE f32x8 load8(const float* p) {
  f32x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
FRUGAL_INLINE void store8(float* p, f32x8 v) {
  std::memcpy(p, &v, sizeof v);
}
FRUGAL_INLINE f32x8 splat(float x) {
  return f32x8{} + x;
}
FRUGAL_INLINE u32x8 bits_of(f32x8 v) {
  return reinterpret_cast<u32x8>(v);
}
FRUGAL_INLINE f32x8 float_of(u32x8 v) {
  return reinterpret_cast<f32x8>(v);
}
FRUGAL_INLINE f32x8 abs8(f32x8 v) {
  return float_of(bits_of(v) & 0x7fffffffu);
}
FRUGAL_INLINE f32x8 max8(f32x8 a, f32x8 b) {
  return a > b ? a : b;
}

// Loads the 8 lanes at p, of which only `valid` exist; the others read as +0.
FRUGAL_INLINE f32x8 load_partial(const float* p, std::size_t valid) {
  float tmp[kLanes] = {};
  std::memcpy(tmp, p, valid * sizeof(float));
  return load8(tmp);
}

// Non-finite (NaN/Inf) detection: or-accumulate the exponent field; all ones means non-finite.
FRUGAL_INLINE u32x8 nonfinite_lanes(f32x8 v) {
  return static_cast<u32x8>((bits_of(v) & 0x7f800000u) == 0x7f800000u);
}

FRUGAL_INLINE bool any(u32x8 mask) {
  std::uint32_t acc = 0;
  for (std::size_t i = 0; i < kLanes; ++i) acc |= mask[i];
  return acc != 0;
}

// Lane-wise sum with a fixed tree so that every Isa gets the same rounding.
FRUGAL_INLINE float hsum(f32x8 v) {
  const float a = (v[0] + v[4]) + (v[2] + v[6]);
  const float b = (v[1] + v[5]) + (v[3] + v[7]);
  return a + b;
}
FRUGAL_INLINE float hmax(f32x8 v) {
  float m = v[0];
  for (std::size_t i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

FRUGAL_INLINE u32x8 mix32x8(u32x8 x) {
  x ^= x >> 16;
  x *= 0x21f0aaadu;
  x ^= x >> 15;
  x *= 0x735a2d97u;
  x ^= x >> 15;
  return x;
}

FRUGAL_INLINE u32x16 mix32x16(u32x16 x) {
  x ^= x >> 16;
  x *= 0x21f0aaadu;
  x ^= x >> 15;
  x *= 0x735a2d97u;
  x ^= x >> 15;
  return x;
}

// Rng::bits32 for consecutive groups of 8 positions, starting at `position`. Keeps the key in
// registers and the low position halves in a vector advanced by 8 per group (a call per group
// with a fresh position re-broadcast everything and reloaded the key through the Rng pointer,
// which the output stores might alias).
class RandomStream {
 public:
  FRUGAL_INLINE RandomStream(const Rng& rng, std::uint64_t position)
      : position_(position), k0_(rng.key_lo()), k1_(rng.key_hi()) {
    const u32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    lo_ = static_cast<std::uint32_t>(position) + lane;
    hi_term_ = u32x8{} + hi_term_of(static_cast<std::uint32_t>(position >> 32));
  }

  // The next two groups (16 positions): lanes 0..7 are what next() would return, then 8..15.
  // One 16-lane computation: a single instruction per step with AVX-512, two otherwise.
  FRUGAL_INLINE u32x16 next16() {
    const auto lo0 = static_cast<std::uint32_t>(position_);
    if (lo0 >= 0xfffffff0u) [[unlikely]] {  // a wrap of the low half is near: group by group
      const u32x8 a = next(), b = next();
      return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    }
    const u32x8 lo1 = lo_ + 8u;
    const u32x16 lo =
        __builtin_shufflevector(lo_, lo1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const u32x16 hi =
        __builtin_shufflevector(hi_term_, hi_term_, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7);
    const u32x16 r = mix32x16(mix32x16(lo ^ k0_) ^ hi);
    lo_ = lo1 + 8u;
    position_ += 16;
    return r;
  }
  // The next two groups as two 8-lane vectors: one 16-lane computation when the Isa runs
  // 16-lane vectors natively (Isa::kWide16), else group by group (GCC lowers 16-lane generic
  // vectors on AVX2 through memory, which costs more than it saves).
  template <class Isa>
  FRUGAL_INLINE void next2(u32x8& a, u32x8& b) {
    if constexpr (Isa::kWide16) {
      const u32x16 r = next16();
      a = low(r);
      b = high(r);
    } else {
      a = next();
      b = next();
    }
  }
  // The next four groups (32 positions). Without 16-lane vectors: one wrap check and one
  // position update for all four instead of one per group, which also frees the registers that
  // each group's bookkeeping held across the others (the AVX2 QSGD loop spilled them).
  template <class Isa>
  FRUGAL_INLINE void next4(u32x8& a, u32x8& b, u32x8& c, u32x8& d) {
    if constexpr (Isa::kWide16) {
      next2<Isa>(a, b);
      next2<Isa>(c, d);
    } else {
      const auto lo0 = static_cast<std::uint32_t>(position_);
      if (lo0 >= 0xffffffe0u) [[unlikely]] {  // a wrap of the low half is near: group by group
        a = next();
        b = next();
        c = next();
        d = next();
        return;
      }
      const u32x8 lo = lo_ ^ k0_;
      const u32x8 k8 = (lo_ + 8u) ^ k0_, k16 = (lo_ + 16u) ^ k0_, k24 = (lo_ + 24u) ^ k0_;
      a = mix32x8(mix32x8(lo) ^ hi_term_);
      b = mix32x8(mix32x8(k8) ^ hi_term_);
      c = mix32x8(mix32x8(k16) ^ hi_term_);
      d = mix32x8(mix32x8(k24) ^ hi_term_);
      lo_ += 32u;
      position_ += 32;
    }
  }
  static FRUGAL_INLINE u32x8 low(u32x16 v) {
    return __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7);
  }
  static FRUGAL_INLINE u32x8 high(u32x16 v) {
    return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  }

  FRUGAL_INLINE u32x8 next() {
    const auto lo0 = static_cast<std::uint32_t>(position_);
    u32x8 hi_term = hi_term_;
    if (lo0 >= 0xfffffff8u) [[unlikely]] {
      // The low half wraps inside this group (the high half carries in some lanes) or right
      // after it: recompute per lane, and the cached term for the next group's high half.
      const auto hi0 = static_cast<std::uint32_t>(position_ >> 32);
      const u32x8 hi = hi0 + (reinterpret_cast<u32x8>(lo_ < lo0) & 1u);
      hi_term = k1_ ^ (hi * 0x9e3779b9u);
      hi_term_ = u32x8{} + hi_term_of(hi0 + 1u);
    }
    const u32x8 r = mix32x8(mix32x8(lo_ ^ k0_) ^ hi_term);
    lo_ += 8u;
    position_ += 8;
    return r;
  }

 private:
  FRUGAL_INLINE std::uint32_t hi_term_of(std::uint32_t hi) const {
    return k1_ ^ (hi * 0x9e3779b9u);
  }

  std::uint64_t position_;
  std::uint32_t k0_, k1_;
  u32x8 lo_;
  u32x8 hi_term_;  // k1 ^ (high half of the position * golden), for the whole current group
};

// Uniform in [0, 1) with 24 bits from the random word: exact in float, so the Bernoulli(p) draw
// u < p has probability p rounded up to a multiple of 2^-24.
FRUGAL_INLINE f32x8 uniform8(u32x8 r) {
  // Through int32 (exact below 2^24): AVX2 has no unsigned conversion.
  return __builtin_convertvector(reinterpret_cast<i32x8>(r >> 8), f32x8) * 0x1.0p-24f;
}

// Lane-wise a > b ? a : b and a < b ? a : b, NaN in `a` giving `b`: exactly MAXPS / MINPS.
FRUGAL_INLINE f32x8 select_max(f32x8 a, f32x8 b) {
  return a > b ? a : b;
}
FRUGAL_INLINE f32x8 select_min(f32x8 a, f32x8 b) {
  return a < b ? a : b;
}

struct Scalar {
  // Whether 16-lane vector types compile to single instructions (RandomStream::next2).
  static constexpr bool kWide16 = false;
  // Whether top-k candidate collection compresses every group without branching (topk.cpp).
  static constexpr bool kBranchFreeCompress = false;
  // Bit i set when lane i of the mask is set.
  static FRUGAL_INLINE std::uint32_t movemask(u32x8 mask) {
    std::uint32_t m = 0;
    for (std::size_t i = 0; i < kLanes; ++i) m |= (mask[i] >> 31) << i;
    return m;
  }
  // Bit 8 * j + i set when the top bit of lane i of m[j] is set (32 lanes in element order).
  static FRUGAL_INLINE std::uint32_t movemask32(u32x8 m0, u32x8 m1, u32x8 m2, u32x8 m3) {
    return movemask(m0) | movemask(m1) << 8 | movemask(m2) << 16 | movemask(m3) << 24;
  }
  static FRUGAL_INLINE f32x8 max(f32x8 a, f32x8 b) { return select_max(a, b); }
  static FRUGAL_INLINE f32x8 min(f32x8 a, f32x8 b) { return select_min(a, b); }
};

#if FRUGAL_HAVE_AVX2_KERNELS
#define FRUGAL_AVX2 __attribute__((target("avx2,f16c,bmi,bmi2,popcnt,lzcnt")))
#define FRUGAL_AVX2_KERNEL __attribute__((target("avx2,f16c,bmi,bmi2,popcnt,lzcnt"), flatten))
struct Avx2 {
  static constexpr bool kWide16 = false;
  static constexpr bool kBranchFreeCompress = true;
  static FRUGAL_AVX2 inline std::uint32_t movemask(u32x8 mask) {
    return static_cast<std::uint32_t>(_mm256_movemask_ps(reinterpret_cast<__m256>(mask)));
  }
  // Signed saturating packs keep each lane's sign; the packs interleave 128-bit halves, which
  // one cross-lane permute puts back in element order before the byte movemask.
  static FRUGAL_AVX2 inline std::uint32_t movemask32(u32x8 m0, u32x8 m1, u32x8 m2, u32x8 m3) {
    const __m256i a =
        _mm256_packs_epi32(reinterpret_cast<__m256i>(m0), reinterpret_cast<__m256i>(m1));
    const __m256i b =
        _mm256_packs_epi32(reinterpret_cast<__m256i>(m2), reinterpret_cast<__m256i>(m3));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b),
                                                      _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    return static_cast<std::uint32_t>(_mm256_movemask_epi8(bytes));
  }
  static FRUGAL_AVX2 inline f32x8 max(f32x8 a, f32x8 b) {
    return reinterpret_cast<f32x8>(
        _mm256_max_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b)));
  }
  static FRUGAL_AVX2 inline f32x8 min(f32x8 a, f32x8 b) {
    return reinterpret_cast<f32x8>(
        _mm256_min_ps(reinterpret_cast<__m256>(a), reinterpret_cast<__m256>(b)));
  }
};
#define FRUGAL_AVX512_TARGET "avx2,f16c,bmi,bmi2,popcnt,lzcnt,avx512f,avx512bw,avx512dq,avx512vl"
#define FRUGAL_AVX512 __attribute__((target(FRUGAL_AVX512_TARGET)))
#define FRUGAL_AVX512_KERNEL __attribute__((target(FRUGAL_AVX512_TARGET), flatten))
// The Avx2 kernels compiled with AVX-512 enabled: 16-lane vector types (the random stream's
// next16) become single instructions and 32 registers relieve spills; a few primitives have
// their own versions (overloads on the tag; the Avx2 ones apply otherwise).
struct Avx512 : Avx2 {
  static constexpr bool kWide16 = true;
};
#endif

// True when the AVX2 (AVX-512) instantiation should run (CPU support and simd_level()).
bool use_avx2() noexcept;
bool use_avx512() noexcept;

// Dispatches to the Avx2 or Scalar instantiation of a kernel. `kernel` is a generic lambda
// taking the Isa tag as its first argument.
#if FRUGAL_HAVE_AVX2_KERNELS
#define FRUGAL_DISPATCH(name, params, args)                                                        \
  static FRUGAL_AVX512_KERNEL auto name##_avx512 params {                                          \
    return name<Avx512> args;                                                                      \
  }                                                                                                \
  static FRUGAL_AVX2_KERNEL auto name##_avx2 params {                                              \
    return name<Avx2> args;                                                                        \
  }                                                                                                \
  static auto name##_scalar params {                                                               \
    return name<Scalar> args;                                                                      \
  }                                                                                                \
  static auto name##_dispatch params {                                                             \
    return use_avx512() ? name##_avx512 args : use_avx2() ? name##_avx2 args : name##_scalar args; \
  }
#else
#define FRUGAL_DISPATCH(name, params, args) \
  static auto name##_scalar params {        \
    return name<Scalar> args;               \
  }                                         \
  static auto name##_dispatch params {      \
    return name##_scalar args;              \
  }
#endif

// ----- payload body access ----------------------------------------------------------------

// Bounds-checked cursor over a body. Section sizes are validated once against the header, so
// the kernels then index freely within their sections.
struct Sections {
  static FRUGAL_INLINE std::span<std::byte> take(std::span<std::byte>& rest, std::size_t n) {
    std::span<std::byte> s = rest.first(n);
    rest = rest.subspan(n);
    return s;
  }
  static FRUGAL_INLINE std::span<const std::byte> take(std::span<const std::byte>& rest,
                                                       std::size_t n) {
    std::span<const std::byte> s = rest.first(n);
    rest = rest.subspan(n);
    return s;
  }
};

FRUGAL_INLINE std::size_t ceil_div(std::size_t a, std::size_t b) {
  return (a + b - 1) / b;
}

FRUGAL_INLINE float load_f32(const std::byte* p) {
  float v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
FRUGAL_INLINE void store_f32(std::byte* p, float v) {
  std::memcpy(p, &v, sizeof v);
}

// fp16 kernels (fp16.cpp), reused by top-k for its values. Return whether any output (encode)
// or input (decode) is Inf/NaN in binary16.
bool encode_half(const float* in, std::size_t n, std::byte* out);
bool decode_half(const std::byte* in, std::size_t n, float* out);

[[noreturn]] void corrupt(const char* what);  // throws Error(InvalidArgument, "corrupt payload")

// Throws unless every f32 in `scales` is finite (and >= 0 when `non_negative`), unless the
// payload is flagged non-finite.
void check_scales(std::span<const std::byte> scales, bool flagged, bool non_negative,
                  const char* what);

// Lane i is all ones when i < valid.
FRUGAL_INLINE u32x8 valid_lanes(std::size_t valid) {
  const u32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  return static_cast<u32x8>(lane < static_cast<std::uint32_t>(valid));
}

}  // namespace frugal::compression::kernel
