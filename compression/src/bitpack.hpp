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
