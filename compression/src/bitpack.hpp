#pragma once

// Internal: bit-plane and level packing shared by the 1-bit, ternary and QSGD kernels. Every
// group of 8 elements maps to whole bytes (one byte per bit plane, `bits` bytes of levels), so
// buckets that are multiples of 8 start on byte boundaries and chunks can be packed in parallel.

#include "kernel.hpp"

namespace frugal::compression::kernel {

// Lane i of the result is all ones when bit i of `byte` is set.
FRUGAL_INLINE u32x8 expand_bits(std::uint32_t byte) {
  const u32x8 shift = {0, 1, 2, 3, 4, 5, 6, 7};
  return ((u32x8{} + byte) >> shift & 1u) == 1u ? u32x8{} + 0xffffffffu : u32x8{};
}

// Packs 8 levels (each < 2^bits) into `bits` bytes: element i occupies bits [i*bits, (i+1)*bits).
// Narrow to bytes in SIMD, then squeeze the bytes together with shifts in one 64-bit word
// (extracting lanes one by one cost more than the rest of the QSGD kernel).
template <int bits>
FRUGAL_INLINE void pack_levels(u32x8 level, std::byte* out) {
  using u8x8 = std::uint8_t __attribute__((vector_size(8)));
  // Two narrowing steps compile to packs; one u32 -> u8 step was scalarized.
  const u8x8 bytes = __builtin_convertvector(__builtin_convertvector(level, u16x8), u8x8);
  std::uint64_t w;
  std::memcpy(&w, &bytes, 8);
  if constexpr (bits == 4) {
    w = (w | (w >> 4)) & 0x00ff00ff00ff00ffULL;
    w = (w | (w >> 8)) & 0x0000ffff0000ffffULL;
    w = (w | (w >> 16)) & 0xffffffffULL;
  } else if constexpr (bits == 2) {
    w = (w | (w >> 6)) & 0x000f000f000f000fULL;
    w = (w | (w >> 12)) & 0x000000ff000000ffULL;
    w = (w | (w >> 24)) & 0xffffULL;
  }
  std::memcpy(out, &w, bits);
}

// Packs 32 levels (each < 2^bits; q0 holds elements 0..7, q1 8..15, ...) into 4 * bits bytes,
// laid out exactly as four pack_levels calls would.
template <int bits>
FRUGAL_INLINE void pack_levels32(Scalar, u32x8 q0, u32x8 q1, u32x8 q2, u32x8 q3, std::byte* out) {
  pack_levels<bits>(q0, out);
  pack_levels<bits>(q1, out + bits);
  pack_levels<bits>(q2, out + 2 * bits);
  pack_levels<bits>(q3, out + 3 * bits);
}

#if FRUGAL_HAVE_AVX2_KERNELS
// Packs 32 levels given as bytes in element order: neighbours merge with multiply-adds
// (maddubs forms b[2j] + b[2j+1] << bits, madd the next level of pairs).
template <int bits>
FRUGAL_AVX2 inline void pack_level_bytes(__m256i bytes, std::byte* out) {
  if constexpr (bits == 8) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), bytes);
  } else if constexpr (bits == 4) {
    const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x1001));
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(pairs, pairs), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
  } else {
    static_assert(bits == 2);
    const __m256i pairs = _mm256_maddubs_epi16(bytes, _mm256_set1_epi16(0x0401));
    const __m256i quads = _mm256_madd_epi16(pairs, _mm256_set1_epi32(0x00100001));
    const __m256i narrow = _mm256_packus_epi16(_mm256_packus_epi32(quads, quads), quads);
    const __m256i packed =
        _mm256_permutevar8x32_epi32(narrow, _mm256_setr_epi32(0, 4, 0, 0, 0, 0, 0, 0));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm256_castsi256_si128(packed));
  }
}

// Narrows the 32 levels to bytes with two saturating packs (they interleave the 128-bit
// halves; one permute restores element order).
template <int bits>
FRUGAL_AVX2 inline void pack_levels32(Avx2, u32x8 q0, u32x8 q1, u32x8 q2, u32x8 q3,
                                      std::byte* out) {
  const __m256i a =
      _mm256_packus_epi32(reinterpret_cast<__m256i>(q0), reinterpret_cast<__m256i>(q1));
  const __m256i b =
      _mm256_packus_epi32(reinterpret_cast<__m256i>(q2), reinterpret_cast<__m256i>(q3));
  pack_level_bytes<bits>(_mm256_permutevar8x32_epi32(_mm256_packus_epi16(a, b),
                                                     _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)),
                         out);
}
#endif

template <int bits>
FRUGAL_INLINE u32x8 unpack_levels(const std::byte* in) {
  if constexpr (bits == 8) {
    using u8x8 = std::uint8_t __attribute__((vector_size(8)));
    u8x8 b;
    std::memcpy(&b, in, 8);
    return __builtin_convertvector(b, u32x8);
  } else {
    std::uint32_t w = 0;
    std::memcpy(&w, in, bits);
    const u32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
    constexpr std::uint32_t kMask = (1u << bits) - 1u;
    return (u32x8{} + w) >> (lane * static_cast<std::uint32_t>(bits)) & kMask;
  }
}

}  // namespace frugal::compression::kernel
