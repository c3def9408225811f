// Method::OneBit: one sign bit per element plus per-chunk reconstruction values. MeanAbs keeps
// s = ||x||_1 / n (EF-SignSGD); SignMeans keeps the means of the non-negative and of the negative
// elements (1-bit SGD, Seide et al. 2014). Biased: use with error feedback.

#include <cmath>
#include <limits>

#include "bitpack.hpp"
#include "methods.hpp"

namespace frugal::compression {
namespace {

using namespace kernel;

// Encodes one chunk: sign bits into `signs` (ceil(len/8) bytes) and returns the two
// reconstruction values {for sign bit 0, for sign bit 1}. One pass: the signs do not depend on
// the scale.
template <class Isa>
void onebit_encode(const float* in, std::size_t n, std::size_t chunk, bool sign_means,
                   std::byte* scales, std::byte* signs) {
  for (std::size_t c0 = 0, c = 0; c0 < n; c0 += chunk, ++c) {
    const std::size_t len = n - c0 < chunk ? n - c0 : chunk;
    const float* x = in + c0;
    std::byte* sb = signs + c0 / 8;
    f32x8 sum_abs{}, sum_pos{}, sum_neg{};
    u32x8 count_neg{};
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      const f32x8 v = load8(x + i);
      const u32x8 neg = bits_of(v) >> 31;
      sum_abs += abs8(v);
      sum_pos += neg != 0u ? f32x8{} : v;
      sum_neg += neg != 0u ? v : f32x8{};
      count_neg += neg;
      sb[i / 8] = static_cast<std::byte>(Isa::movemask(bits_of(v)));
    }
    if (i < len) {  // padding lanes are +0: no effect on sums, and not counted
      const f32x8 v = load_partial(x + i, len - i);
      const u32x8 neg = bits_of(v) >> 31;
      sum_abs += abs8(v);
      sum_pos += neg != 0u ? f32x8{} : v;
      sum_neg += neg != 0u ? v : f32x8{};
      count_neg += neg;
      sb[i / 8] = static_cast<std::byte>(Isa::movemask(bits_of(v)));
    }
    float a, b;
    if (sign_means) {
      std::uint32_t nneg = 0;
      for (std::size_t l = 0; l < kLanes; ++l) nneg += count_neg[l];
      const std::size_t npos = len - nneg;
      a = npos != 0 ? hsum(sum_pos) / static_cast<float>(npos) : 0.0f;
      b = nneg != 0 ? hsum(sum_neg) / static_cast<float>(nneg) : 0.0f;
      store_f32(scales + 8 * c, a);
      store_f32(scales + 8 * c + 4, b);
    } else {
      a = hsum(sum_abs) / static_cast<float>(len);
      store_f32(scales + 4 * c, a);
    }
  }
}
FRUGAL_DISPATCH(onebit_encode,
                (const float* in, std::size_t n, std::size_t chunk, bool sign_means,
                 std::byte* scales, std::byte* signs),
                (in, n, chunk, sign_means, scales, signs))

// 16 elements from their 16 sign bits (two bytes): vb where the bit is set, else va; added to y
// when `add`. AVX-512 selects all 16 lanes with one masked blend straight from the bits.
template <class Isa>
FRUGAL_INLINE void decode16(Isa, const std::byte* sb, f32x8 va, f32x8 vb, float* y, bool add) {
  for (std::size_t h = 0; h < 2; ++h) {
    const f32x8 v = expand_bits(static_cast<std::uint32_t>(sb[h])) != 0u ? vb : va;
    store8(y + 8 * h, add ? load8(y + 8 * h) + v : v);
  }
}
#if FRUGAL_HAVE_AVX2_KERNELS
FRUGAL_AVX512 inline void decode16(Avx512, const std::byte* sb, f32x8 va, f32x8 vb, float* y,
                                   bool add) {
  std::uint16_t bits;
  std::memcpy(&bits, sb, 2);
  __m512 v = _mm512_mask_blend_ps(bits, _mm512_set1_ps(va[0]), _mm512_set1_ps(vb[0]));
  if (add) v = _mm512_add_ps(_mm512_loadu_ps(y), v);  // y + v, as the 8-lane version
  _mm512_storeu_ps(y, v);
}
#endif

template <class Isa>
void onebit_decode(const std::byte* scales, const std::byte* signs, std::size_t n,
                   std::size_t chunk, bool sign_means, float* out, bool add) {
  for (std::size_t c0 = 0, c = 0; c0 < n; c0 += chunk, ++c) {
    const std::size_t len = n - c0 < chunk ? n - c0 : chunk;
    float a, b;
    if (sign_means) {
      a = load_f32(scales + 8 * c);
      b = load_f32(scales + 8 * c + 4);
    } else {
      a = load_f32(scales + 4 * c);
      b = -a;
    }
    const f32x8 va = splat(a), vb = splat(b);
    float* y = out + c0;
    const std::byte* sb = signs + c0 / 8;
    std::size_t i = 0;
    for (; i + 2 * kLanes <= len; i += 2 * kLanes) decode16(Isa{}, sb + i / 8, va, vb, y + i, add);
    for (; i + kLanes <= len; i += kLanes) {
      const f32x8 v = expand_bits(static_cast<std::uint32_t>(sb[i / 8])) != 0u ? vb : va;
      store8(y + i, add ? load8(y + i) + v : v);
    }
    if (i < len) {
      f32x8 v = expand_bits(static_cast<std::uint32_t>(sb[i / 8])) != 0u ? vb : va;
      if (add) v += load_partial(y + i, len - i);
      std::memcpy(y + i, &v, 4 * (len - i));
    }
  }
}
FRUGAL_DISPATCH(onebit_decode,
                (const std::byte* scales, const std::byte* signs, std::size_t n, std::size_t chunk,
                 bool sign_means, float* out, bool add),
                (scales, signs, n, chunk, sign_means, out, add))

class OneBitCompressor final : public Compressor {
 public:
  explicit OneBitCompressor(const CompressionConfig& config) : Compressor(config) {}

  std::size_t max_encoded_bytes(std::size_t n) const noexcept override {
    return PayloadHeader::kSize + scale_bytes(n) + ceil_div(n, 8);
  }
  std::optional<std::size_t> encoded_bytes(std::size_t n) const noexcept override {
    return max_encoded_bytes(n);
  }

 protected:
  void fill_header(PayloadHeader& h) const noexcept override {
    h.variant = static_cast<std::uint8_t>(config_.scaling);
    h.bucket = static_cast<std::uint32_t>(config_.bucket);
  }
  std::size_t body_bytes(const PayloadHeader& h) const noexcept override {
    return max_encoded_bytes(h.count) - PayloadHeader::kSize;
  }

  std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng&,
                          PayloadHeader& header) const override {
    const std::size_t n = input.size();
    const std::size_t sb = scale_bytes(n);
    onebit_encode_dispatch(input.data(), n, config_.bucket, sign_means(), body.data(),
                           body.data() + sb);
    // Any NaN/Inf (or an overflowing sum) poisons its chunk's scale, so checking the scales
    // catches every one without another pass over the input.
    for (std::size_t i = 0; i < sb; i += 4) {
      if (!std::isfinite(load_f32(body.data() + i))) {
        header.flags |= PayloadHeader::kNonFinite;
        break;
      }
    }
    return sb + ceil_div(n, 8);
  }

  void decode_body(const PayloadHeader& h, std::span<const std::byte> body, std::span<float> out,
                   bool add) const override {
    const std::size_t n = out.size();
    check_body(h, body);
    onebit_decode_dispatch(body.data(), body.data() + scale_bytes(n), n, config_.bucket,
                           sign_means(), out.data(), add);
  }

  void check_body(const PayloadHeader& h, std::span<const std::byte> body) const override {
    check_scales(body.first(scale_bytes(h.count)), h.non_finite(), !sign_means(), "1-bit scale");
  }

  void decode_range_add(const PayloadHeader& h, std::span<const std::byte> body, std::size_t begin,
                        std::span<float> out) const override {
    onebit_decode_dispatch(body.data() + scale_bytes(begin),
                           body.data() + scale_bytes(h.count) + begin / 8, out.size(),
                           config_.bucket, sign_means(), out.data(), true);
  }

  std::size_t range_granule() const noexcept override { return config_.bucket; }
  // A chunk's sums of magnitudes stay below FLT_MAX / 2, rounding included.
  float flag_free_magnitude() const noexcept override {
    return std::numeric_limits<float>::max() / (2.0f * static_cast<float>(config_.bucket));
  }

  bool encode_range(std::span<const float> x, std::size_t n, std::size_t begin,
                    std::span<std::byte> body, const Rng&) const override {
    std::byte* scales = body.data() + scale_bytes(begin);  // begin is a multiple of the chunk
    onebit_encode_dispatch(x.data(), x.size(), config_.bucket, sign_means(), scales,
                           body.data() + scale_bytes(n) + begin / 8);
    for (std::size_t i = 0; i < scale_bytes(x.size()); i += 4) {
      if (!std::isfinite(load_f32(scales + i))) return true;
    }
    return false;
  }

  void decode_range(std::span<const std::byte> body, std::size_t n, std::size_t begin,
                    std::span<float> out) const override {
    onebit_decode_dispatch(body.data() + scale_bytes(begin),
                           body.data() + scale_bytes(n) + begin / 8, out.size(), config_.bucket,
                           sign_means(), out.data(), false);
  }

 private:
  bool sign_means() const noexcept { return config_.scaling == OneBitScaling::SignMeans; }
  std::size_t scale_bytes(std::size_t n) const noexcept {
    return ceil_div(n, config_.bucket) * (sign_means() ? 8 : 4);
  }
};

}  // namespace

std::unique_ptr<Compressor> make_onebit_compressor(const CompressionConfig& config) {
  return std::make_unique<OneBitCompressor>(config);
}

}  // namespace frugal::compression
