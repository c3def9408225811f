#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "frugal/enum_names.hpp"

namespace frugal::compression {

// Compression methods. The numeric values are on the wire (PayloadHeader::method): append only.
enum class Method : std::uint8_t {
  None = 0,     // raw fp32
  Fp16 = 1,     // IEEE half, round to nearest even
  Bf16 = 2,     // bfloat16, round to nearest even or stochastic
  TopK = 3,     // k largest magnitudes as (index, value)
  OneBit = 4,   // sign bits + per-chunk reconstruction values
  Ternary = 5,  // TernGrad: {-s, 0, +s} per bucket, stochastic
  Qsgd = 6,     // QSGD: per-bucket norm, 2^bits - 1 levels, stochastic
};

}  // namespace frugal::compression

namespace frugal {

// The names every command line, log and error message uses for a method.
template <>
struct EnumNames<compression::Method> {
  using Method = compression::Method;
  static constexpr std::array<EnumName<Method>, 7> table{{{Method::None, "none"},
                                                          {Method::Fp16, "fp16"},
                                                          {Method::Bf16, "bf16"},
                                                          {Method::TopK, "topk"},
                                                          {Method::OneBit, "onebit"},
                                                          {Method::Ternary, "ternary"},
                                                          {Method::Qsgd, "qsgd"}}};
};

}  // namespace frugal

namespace frugal::compression {

constexpr std::string_view to_string(Method method) noexcept {
  return enum_name(method);
}

// Every payload starts with this 32-byte header, little-endian, written and read with memcpy so
// payload buffers need no alignment. Layout after the header depends on the method:
//   None     n x f32
//   Fp16     n x binary16            Bf16  n x bfloat16
//   TopK     k x f32 or k x binary16 values, then the indices (strictly increasing) coded per
//            chunk of `bucket` elements (topk_indices.hpp) in `bits` bytes
//   OneBit   nb x f32 (MeanAbs: +scale) or nb x 2 x f32 (SignMeans: positive mean, negative
//            mean), then ceil(n/8) bytes of sign bits (bit i of byte j: element 8j+i is negative)
//   Ternary  nb x f32 scales, ceil(n/8) bytes of sign bits, ceil(n/8) bytes of nonzero bits
//   Qsgd     nb x f32 norms, ceil(n/8) bytes of sign bits, ceil(n*bits/8) bytes of levels
//            (element i in bits [i*bits, (i+1)*bits) of the level stream, low bits first)
// where nb = ceil(n / bucket). Bucket sizes are multiples of 8, so every bucket starts on a byte
// boundary of the bit streams.
struct PayloadHeader {
  static constexpr std::uint32_t kMagic = 0x43475246;  // "FRGC" little-endian
  // 2: top-k indices coded (delta varints or bitmap per chunk) instead of u32 each.
  static constexpr std::uint8_t kVersion = 2;
  static constexpr std::size_t kSize = 32;

  // flags
  static constexpr std::uint8_t kNonFinite = 1;  // the input had NaN/Inf (or overflowed the format)

  std::uint8_t version = kVersion;
  Method method = Method::None;
  std::uint8_t variant = 0;  // OneBit: OneBitScaling; TopK: TopKValues; Qsgd: QsgdNorm; Bf16: SR
  std::uint8_t flags = 0;
  std::uint32_t bucket = 0;  // OneBit / Ternary / Qsgd bucket size, TopK index chunk, else 0
  std::uint32_t bits = 0;    // Qsgd bits per level, TopK index stream bytes, else 0
  std::uint64_t count = 0;   // element count n of the dense buffer
  std::uint64_t k = 0;       // TopK: number of (index, value) pairs, else 0

  bool non_finite() const noexcept { return (flags & kNonFinite) != 0; }
};

// Writes `header` into the first kSize bytes of `out` (which must hold them).
void write_header(const PayloadHeader& header, std::span<std::byte> out) noexcept;

// Reads and checks the header's framing (length, magic, version, known method). Does not check
// that the payload fits any particular receiver: Compressor::decode does that.
// Throws frugal::Error(InvalidArgument) when the bytes are not a frugal payload.
PayloadHeader read_header(std::span<const std::byte> payload);

}  // namespace frugal::compression
