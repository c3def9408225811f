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
FRUGAL_INLINE void pack_levels(u32x8 level, int bits, std::byte* out) {
  if (bits == 8) {
    for (std::size_t i = 0; i < kLanes; ++i) out[i] = static_cast<std::byte>(level[i]);
  } else if (bits == 4) {
    for (std::size_t i = 0; i < 4; ++i) {
      out[i] = static_cast<std::byte>(level[2 * i] | (level[2 * i + 1] << 4));
    }
  } else {  // 2
    for (std::size_t i = 0; i < 2; ++i) {
      out[i] = static_cast<std::byte>(level[4 * i] | (level[4 * i + 1] << 2) |
                                      (level[4 * i + 2] << 4) | (level[4 * i + 3] << 6));
    }
  }
}

FRUGAL_INLINE u32x8 unpack_levels(const std::byte* in, int bits) {
  if (bits == 8) {
    std::uint64_t w;
    std::memcpy(&w, in, 8);
    const u64x4 shift = {0, 8, 16, 24};
    const u64x4 lo = (u64x4{} + w) >> shift & 0xffu;
    const u64x4 hi = (u64x4{} + w) >> (shift + 32) & 0xffu;
    return u32x8{static_cast<std::uint32_t>(lo[0]), static_cast<std::uint32_t>(lo[1]),
                 static_cast<std::uint32_t>(lo[2]), static_cast<std::uint32_t>(lo[3]),
                 static_cast<std::uint32_t>(hi[0]), static_cast<std::uint32_t>(hi[1]),
                 static_cast<std::uint32_t>(hi[2]), static_cast<std::uint32_t>(hi[3])};
  }
  std::uint32_t w = 0;
  std::memcpy(&w, in, static_cast<std::size_t>(bits));
  const u32x8 lane = {0, 1, 2, 3, 4, 5, 6, 7};
  const std::uint32_t mask = (1u << bits) - 1u;
  return (u32x8{} + w) >> (lane * static_cast<std::uint32_t>(bits)) & mask;
}

}  // namespace frugal::compression::kernel
