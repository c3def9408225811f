// Method::Ternary (TernGrad, Wen et al. 2017): per bucket s = max|x|, or with clip_sigma = c
// TernGrad's clipping s = min(max|x|, c * rms(x)); element i becomes s * sign(x_i) * b_i with
// b_i ~ Bernoulli(min(|x_i| / s, 1)). Unbiased without clipping; clipping biases only the
// elements beyond c * rms. Two bit planes per bucket: signs and "non-zero" bits. The header's
// variant says whether the sender clipped (1) or not (0), so that ranks configured differently
// are told apart by the decoder; the payload layout is the same either way.

#include <cmath>
#include <limits>

#include "bitpack.hpp"
#include "methods.hpp"

namespace frugal::compression {
namespace {

using namespace kernel;

// Lanes kept: Bernoulli(|x| / s), and |x| >= s (clipped, or the maximum) whatever 1/s rounds to.
FRUGAL_INLINE u32x8 ternary_keep(f32x8 v, float s, float inv, u32x8 random) {
  const f32x8 ax = abs8(v);
  return static_cast<u32x8>(uniform8(random) < ax * inv) |
         static_cast<u32x8>((ax >= s) & (ax > 0.0f));
}

template <class Isa>
FRUGAL_INLINE void ternary_group(f32x8 v, float s, float inv, RandomStream& random,
                                 std::byte* signs, std::byte* nonzero) {
  *signs = static_cast<std::byte>(Isa::movemask(bits_of(v)));
  *nonzero = static_cast<std::byte>(Isa::movemask(ternary_keep(v, s, inv, random.next())));
}

// 32 elements: signs and non-zero bits as one 32-bit word each.
template <class Isa>
FRUGAL_INLINE void ternary_block(const float* x, float s, float inv, RandomStream& random,
                                 std::byte* signs, std::byte* nonzero) {
  const f32x8 v0 = load8(x), v1 = load8(x + 8), v2 = load8(x + 16), v3 = load8(x + 24);
  u32x8 r0, r1, r2, r3;
  random.next4<Isa>(r0, r1, r2, r3);
  const std::uint32_t keep =
      Isa::movemask32(ternary_keep(v0, s, inv, r0), ternary_keep(v1, s, inv, r1),
                      ternary_keep(v2, s, inv, r2), ternary_keep(v3, s, inv, r3));
  const std::uint32_t sign = Isa::movemask32(bits_of(v0), bits_of(v1), bits_of(v2), bits_of(v3));
  std::memcpy(signs, &sign, 4);
  std::memcpy(nonzero, &keep, 4);
}

template <class Isa>
void ternary_encode(const float* in, std::size_t n, std::size_t bucket, float clip, const Rng& rng,
                    std::uint64_t offset, std::byte* scales, std::byte* signs, std::byte* nonzero) {
  // Buckets are multiples of 8, so groups are visited at consecutive positions.
  RandomStream random(rng, offset);
  for (std::size_t b0 = 0, b = 0; b0 < n; b0 += bucket, ++b) {
    const std::size_t len = n - b0 < bucket ? n - b0 : bucket;
    const float* x = in + b0;
    f32x8 m{}, squares{};
    u32x8 bad{};
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      const f32x8 v = load8(x + i);
      bad |= nonfinite_lanes(v);
      m = max8(m, abs8(v));
      squares += v * v;
    }
    if (i < len) {
      const f32x8 v = load_partial(x + i, len - i);
      bad |= nonfinite_lanes(v);
      m = max8(m, abs8(v));
      squares += v * v;
    }
    // max8 drops NaN lanes, so the scale carries the verdict explicitly.
    float s = any(bad) ? std::numeric_limits<float>::quiet_NaN() : hmax(m);
    if (clip > 0.0f && s > 0.0f) {
      // In double: the sum of squares of finite floats can pass FLT_MAX where the RMS does not.
      const double rms = std::sqrt(static_cast<double>(hsum(squares)) / static_cast<double>(len));
      const double bound = static_cast<double>(clip) * rms;
      if (std::isfinite(rms) && bound < static_cast<double>(s)) s = static_cast<float>(bound);
    }
    store_f32(scales + 4 * b, s);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    std::byte* sp = signs + b0 / 8;
    std::byte* zp = nonzero + b0 / 8;
    for (i = 0; i + 4 * kLanes <= len; i += 4 * kLanes) {
      ternary_block<Isa>(x + i, s, inv, random, sp + i / 8, zp + i / 8);
    }
    for (; i + kLanes <= len; i += kLanes) {
      ternary_group<Isa>(load8(x + i), s, inv, random, sp + i / 8, zp + i / 8);
    }
    if (i < len) {
      ternary_group<Isa>(load_partial(x + i, len - i), s, inv, random, sp + i / 8, zp + i / 8);
    }
  }
}
FRUGAL_DISPATCH(ternary_encode,
                (const float* in, std::size_t n, std::size_t bucket, float clip, const Rng& rng,
                 std::uint64_t offset, std::byte* scales, std::byte* signs, std::byte* nonzero),
                (in, n, bucket, clip, rng, offset, scales, signs, nonzero))

template <class Isa>
void ternary_decode(const std::byte* scales, const std::byte* signs, const std::byte* nonzero,
                    std::size_t n, std::size_t bucket, float* out, bool add) {
  for (std::size_t b0 = 0, b = 0; b0 < n; b0 += bucket, ++b) {
    const std::size_t len = n - b0 < bucket ? n - b0 : bucket;
    const float s = load_f32(scales + 4 * b);
    const f32x8 pos = splat(s), neg = splat(-s);
    float* y = out + b0;
    const auto value = [&](std::size_t i) {
      const u32x8 sg = expand_bits(static_cast<std::uint32_t>(signs[(b0 + i) / 8]));
      const u32x8 nz = expand_bits(static_cast<std::uint32_t>(nonzero[(b0 + i) / 8]));
      const f32x8 mag = sg != 0u ? neg : pos;
      return nz != 0u ? mag : f32x8{};
    };
    std::size_t i = 0;
    for (; i + kLanes <= len; i += kLanes) {
      const f32x8 v = value(i);
      store8(y + i, add ? load8(y + i) + v : v);
    }
    if (i < len) {
      f32x8 v = value(i);
      if (add) v += load_partial(y + i, len - i);
      std::memcpy(y + i, &v, 4 * (len - i));
    }
  }
}
FRUGAL_DISPATCH(ternary_decode,
                (const std::byte* scales, const std::byte* signs, const std::byte* nonzero,
                 std::size_t n, std::size_t bucket, float* out, bool add),
                (scales, signs, nonzero, n, bucket, out, add))

class TernaryCompressor final : public Compressor {
 public:
  explicit TernaryCompressor(const CompressionConfig& config) : Compressor(config) {}

  std::size_t max_encoded_bytes(std::size_t n) const noexcept override {
    return PayloadHeader::kSize + scale_bytes(n) + 2 * ceil_div(n, 8);
  }
  std::optional<std::size_t> encoded_bytes(std::size_t n) const noexcept override {
    return max_encoded_bytes(n);
  }

 protected:
  void fill_header(PayloadHeader& h) const noexcept override {
    h.variant = config_.clip_sigma > 0.0f ? 1 : 0;
    h.bucket = static_cast<std::uint32_t>(config_.bucket);
  }
  std::size_t body_bytes(const PayloadHeader& h) const noexcept override {
    return max_encoded_bytes(h.count) - PayloadHeader::kSize;
  }

  std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng& rng,
                          PayloadHeader& header) const override {
    const std::size_t n = input.size();
    const std::size_t sb = scale_bytes(n);
    const std::size_t plane = ceil_div(n, 8);
    std::byte* p = body.data();
    ternary_encode_dispatch(input.data(), n, config_.bucket, config_.clip_sigma, rng, rng.offset(),
                            p, p + sb, p + sb + plane);
    for (std::size_t i = 0; i < sb; i += 4) {
      if (!std::isfinite(load_f32(p + i))) {
        header.flags |= PayloadHeader::kNonFinite;
        break;
      }
    }
    return sb + 2 * plane;
  }

  void decode_body(const PayloadHeader& h, std::span<const std::byte> body, std::span<float> out,
                   bool add) const override {
    const std::size_t n = out.size();
    const std::size_t sb = scale_bytes(n);
    const std::size_t plane = ceil_div(n, 8);
    check_body(h, body);
    const std::byte* p = body.data();
    ternary_decode_dispatch(p, p + sb, p + sb + plane, n, config_.bucket, out.data(), add);
  }

  void check_body(const PayloadHeader& h, std::span<const std::byte> body) const override {
    check_scales(body.first(scale_bytes(h.count)), h.non_finite(), true, "ternary scale");
  }

  void decode_range_add(const PayloadHeader& h, std::span<const std::byte> body, std::size_t begin,
                        std::span<float> out) const override {
    const std::byte* signs = body.data() + scale_bytes(h.count) + begin / 8;
    ternary_decode_dispatch(body.data() + 4 * (begin / config_.bucket), signs,
                            signs + ceil_div(h.count, 8), out.size(), config_.bucket, out.data(),
                            true);
  }

  std::size_t range_granule() const noexcept override { return config_.bucket; }
  // The scale is the largest magnitude: finite whenever the input is.
  float flag_free_magnitude() const noexcept override { return std::numeric_limits<float>::max(); }

  bool encode_range(std::span<const float> x, std::size_t n, std::size_t begin,
                    std::span<std::byte> body, const Rng& rng) const override {
    const std::size_t plane = ceil_div(n, 8);
    std::byte* scales = body.data() + 4 * (begin / config_.bucket);
    std::byte* signs = body.data() + scale_bytes(n) + begin / 8;
    ternary_encode_dispatch(x.data(), x.size(), config_.bucket, config_.clip_sigma, rng,
                            rng.offset() + begin, scales, signs, signs + plane);
    for (std::size_t i = 0; i < scale_bytes(x.size()); i += 4) {
      if (!std::isfinite(load_f32(scales + i))) return true;
    }
    return false;
  }

  void decode_range(std::span<const std::byte> body, std::size_t n, std::size_t begin,
                    std::span<float> out) const override {
    const std::byte* signs = body.data() + scale_bytes(n) + begin / 8;
    ternary_decode_dispatch(body.data() + 4 * (begin / config_.bucket), signs,
                            signs + ceil_div(n, 8), out.size(), config_.bucket, out.data(), false);
  }

 private:
  std::size_t scale_bytes(std::size_t n) const noexcept { return 4 * ceil_div(n, config_.bucket); }
};

}  // namespace

std::unique_ptr<Compressor> make_ternary_compressor(const CompressionConfig& config) {
  return std::make_unique<TernaryCompressor>(config);
}

}  // namespace frugal::compression
