// Method::Fp16 and Method::Bf16: 16-bit casts. Fp16 rounds to nearest even (F16C on x86, a
// bit-exact software conversion elsewhere); Bf16 rounds to nearest even or, optionally,
// stochastically (add 16 random bits below the kept mantissa, truncate), which is unbiased.

#include <algorithm>

#include "frugal/compression/half.hpp"
#include "kernel.hpp"
#include "methods.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>  // _mm_stream_si128 (also where kernel.hpp has no AVX2 kernels)
#endif

namespace frugal::compression {

// IEEE binary32 -> binary16, round to nearest even, NaN quieted with its top payload bits kept
// (what VCVTPS2PH does). After F. Giesen's float_to_half_fast3_rtne.
std::uint16_t float_to_half(float f) noexcept {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t a = x & 0x7fffffffu;
  std::uint32_t h;
  if (a >= 0x7f800000u) {
    h = a > 0x7f800000u ? (0x7e00u | ((a >> 13) & 0x3ffu)) : 0x7c00u;
  } else if (a >= 0x477ff000u) {  // rounds to >= 65520: overflow
    h = 0x7c00u;
  } else if (a < 0x38800000u) {  // below 2^-14: subnormal or zero in half
    // Adding 0.5 aligns the half's subnormal grid with float's ulp; the FPU rounds to even.
    const float shifted = std::bit_cast<float>(a) + 0.5f;
    h = std::bit_cast<std::uint32_t>(shifted) - 0x3f000000u;
  } else {
    const std::uint32_t odd = (a >> 13) & 1u;
    h = (a + 0xc8000fffu + odd) >> 13;  // rebias exponent (-112 << 23) and round
  }
  return static_cast<std::uint16_t>(sign | h);
}

// binary16 -> binary32 (exact); NaN quieted like VCVTPH2PS.
float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  std::uint32_t x;
  if (e == 0x1f) {
    x = 0x7f800000u | (m << 13) | (m != 0 ? 0x00400000u : 0u);
  } else if (e != 0) {
    x = ((e + 112u) << 23) | (m << 13);
  } else {
    // Subnormal: m * 2^-24, exact in float.
    x = std::bit_cast<std::uint32_t>(static_cast<float>(m) * 0x1.0p-24f);
  }
  return std::bit_cast<float>(sign | x);
}

namespace {

using namespace kernel;

struct HalfScalar : Scalar {
  static FRUGAL_INLINE u16x8 to_half(f32x8 v) {
    u16x8 h;
    for (std::size_t i = 0; i < kLanes; ++i) h[i] = float_to_half(v[i]);
    return h;
  }
  static FRUGAL_INLINE f32x8 from_half(u16x8 h) {
    f32x8 v;
    for (std::size_t i = 0; i < kLanes; ++i) v[i] = half_to_float(h[i]);
    return v;
  }
};

#if FRUGAL_HAVE_AVX2_KERNELS
struct HalfAvx2 : Avx2 {
  static FRUGAL_AVX2 inline u16x8 to_half(f32x8 v) {
    return reinterpret_cast<u16x8>(
        _mm256_cvtps_ph(reinterpret_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT));
  }
  static FRUGAL_AVX2 inline f32x8 from_half(u16x8 h) {
    return reinterpret_cast<f32x8>(_mm256_cvtph_ps(reinterpret_cast<__m128i>(h)));
  }
};
#endif

FRUGAL_INLINE u16x8 load_u16x8(const std::byte* p) {
  u16x8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
FRUGAL_INLINE u16x8 load_u16_partial(const std::byte* p, std::size_t valid) {
  std::uint16_t tmp[kLanes] = {};
  std::memcpy(tmp, p, 2 * valid);
  return load_u16x8(reinterpret_cast<const std::byte*>(tmp));
}

// Lanes whose 16-bit value has an all-ones exponent (`exp_mask`): Inf/NaN in that format.
FRUGAL_INLINE u32x8 special16(u16x8 h, std::uint32_t exp_mask) {
  const u32x8 w = __builtin_convertvector(h, u32x8);
  return static_cast<u32x8>((w & exp_mask) == exp_mask);
}

// ---- fp16

template <class Isa>
bool fp16_encode(const float* in, std::size_t n, std::byte* out) {
  u32x8 bad{};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const u16x8 h = Isa::to_half(load8(in + i));
    bad |= special16(h, 0x7c00u);
    std::memcpy(out + 2 * i, &h, sizeof h);
  }
  if (i < n) {
    const u16x8 h = Isa::to_half(load_partial(in + i, n - i));
    bad |= special16(h, 0x7c00u);
    std::memcpy(out + 2 * i, &h, 2 * (n - i));
  }
  return any(bad);
}

template <class Isa>
bool fp16_decode(const std::byte* in, std::size_t n, float* out, bool add) {
  u32x8 bad{};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const u16x8 h = load_u16x8(in + 2 * i);
    bad |= special16(h, 0x7c00u);
    const f32x8 v = Isa::from_half(h);
    store8(out + i, add ? load8(out + i) + v : v);
  }
  if (i < n) {
    const u16x8 h = load_u16_partial(in + 2 * i, n - i);
    bad |= special16(h, 0x7c00u);
    f32x8 v = Isa::from_half(h);
    if (add) v += load_partial(out + i, n - i);
    std::memcpy(out + i, &v, 4 * (n - i));
  }
  return any(bad);
}

// fp16_encode that also writes what fp16_decode would give back for each element into d (the
// payload is not read back), and with `stream` stores the payload past the cache, from the first
// 16-byte boundary on: error feedback's fused pass, where nothing reads it soon.
template <class Isa>
bool fp16_encode_reconstruct(const float* in, std::size_t n, std::byte* out, float* d,
                             bool stream) {
  u32x8 bad{};
  const auto partial = [&](std::size_t i, std::size_t valid) {  // padding lanes +0: not special
    const u16x8 h = Isa::to_half(load_partial(in + i, valid));
    bad |= special16(h, 0x7c00u);
    std::memcpy(out + 2 * i, &h, 2 * valid);
    const f32x8 v = Isa::from_half(h);
    std::memcpy(d + i, &v, 4 * valid);
  };
  std::size_t i = 0;
  const auto address = reinterpret_cast<std::uintptr_t>(out);
  stream = stream && address % 2 == 0;
  if (stream) {
    i = std::min(n, (16 - address % 16) % 16 / 2);
    if (i != 0) partial(0, i);
  }
  for (; i + kLanes <= n; i += kLanes) {
    const u16x8 h = Isa::to_half(load8(in + i));
    bad |= special16(h, 0x7c00u);
#if defined(__SSE2__)
    if (stream) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(out + 2 * i), reinterpret_cast<__m128i>(h));
    } else {
      std::memcpy(out + 2 * i, &h, sizeof h);
    }
#else
    std::memcpy(out + 2 * i, &h, sizeof h);
#endif
    store8(d + i, Isa::from_half(h));
  }
  if (i < n) partial(i, n - i);
  return any(bad);
}

// ---- bf16

FRUGAL_INLINE u16x8 to_bf16(f32x8 v, const u32x8* random) {
  const u32x8 u = bits_of(v);
  const u32x8 nan = static_cast<u32x8>((u & 0x7fffffffu) > 0x7f800000u);
  const u32x8 add = random != nullptr ? (*random & 0xffffu) : (0x7fffu + ((u >> 16) & 1u));
  const u32x8 rounded = (u + add) >> 16;
  const u32x8 quiet = (u >> 16) | 0x40u;
  return __builtin_convertvector(nan ? quiet : rounded, u16x8);
}

FRUGAL_INLINE f32x8 from_bf16(u16x8 h) {
  return float_of(__builtin_convertvector(h, u32x8) << 16);
}

template <class Isa>
bool bf16_encode(const float* in, std::size_t n, std::byte* out, const Rng* rng) {
  u32x8 bad{};
  std::size_t i = 0;
  if (rng != nullptr) {
    RandomStream random(*rng, rng->offset());
    for (; i + 2 * kLanes <= n; i += 2 * kLanes) {
      u32x8 r0, r1;
      random.next2<Isa>(r0, r1);
      const u16x8 h0 = to_bf16(load8(in + i), &r0);
      const u16x8 h1 = to_bf16(load8(in + i + kLanes), &r1);
      bad |= special16(h0, 0x7f80u) | special16(h1, 0x7f80u);
      std::memcpy(out + 2 * i, &h0, sizeof h0);
      std::memcpy(out + 2 * (i + kLanes), &h1, sizeof h1);
    }
    for (; i + kLanes <= n; i += kLanes) {
      const u32x8 r = random.next();
      const u16x8 h = to_bf16(load8(in + i), &r);
      bad |= special16(h, 0x7f80u);
      std::memcpy(out + 2 * i, &h, sizeof h);
    }
    if (i < n) {
      const u32x8 r = random.next();
      const u16x8 h = to_bf16(load_partial(in + i, n - i), &r);
      bad |= special16(h, 0x7f80u);
      std::memcpy(out + 2 * i, &h, 2 * (n - i));
    }
    return any(bad);
  }
  for (; i + kLanes <= n; i += kLanes) {
    const u16x8 h = to_bf16(load8(in + i), nullptr);
    bad |= special16(h, 0x7f80u);
    std::memcpy(out + 2 * i, &h, sizeof h);
  }
  if (i < n) {
    const u16x8 h = to_bf16(load_partial(in + i, n - i), nullptr);
    bad |= special16(h, 0x7f80u);
    std::memcpy(out + 2 * i, &h, 2 * (n - i));
  }
  return any(bad);
}

template <class Isa>
bool bf16_decode(const std::byte* in, std::size_t n, float* out, bool add) {
  u32x8 bad{};
  std::size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const u16x8 h = load_u16x8(in + 2 * i);
    bad |= special16(h, 0x7f80u);
    const f32x8 v = from_bf16(h);
    store8(out + i, add ? load8(out + i) + v : v);
  }
  if (i < n) {
    const u16x8 h = load_u16_partial(in + 2 * i, n - i);
    bad |= special16(h, 0x7f80u);
    f32x8 v = from_bf16(h);
    if (add) v += load_partial(out + i, n - i);
    std::memcpy(out + i, &v, 4 * (n - i));
  }
  return any(bad);
}

#if FRUGAL_HAVE_AVX2_KERNELS
struct HalfAvx512 : HalfAvx2 {
  static constexpr bool kWide16 = true;
};
#define HALF_DISPATCH(name, params, args)                                                          \
  static FRUGAL_AVX512_KERNEL auto name##_avx512 params {                                          \
    return name<HalfAvx512> args;                                                                  \
  }                                                                                                \
  static FRUGAL_AVX2_KERNEL auto name##_avx2 params {                                              \
    return name<HalfAvx2> args;                                                                    \
  }                                                                                                \
  static auto name##_scalar params {                                                               \
    return name<HalfScalar> args;                                                                  \
  }                                                                                                \
  static auto name##_dispatch params {                                                             \
    return use_avx512() ? name##_avx512 args : use_avx2() ? name##_avx2 args : name##_scalar args; \
  }
#else
#define HALF_DISPATCH(name, params, args) \
  static auto name##_scalar params {      \
    return name<HalfScalar> args;         \
  }                                       \
  static auto name##_dispatch params {    \
    return name##_scalar args;            \
  }
#endif

HALF_DISPATCH(fp16_encode, (const float* in, std::size_t n, std::byte* out), (in, n, out))
HALF_DISPATCH(fp16_decode, (const std::byte* in, std::size_t n, float* out, bool add),
              (in, n, out, add))
HALF_DISPATCH(fp16_encode_reconstruct,
              (const float* in, std::size_t n, std::byte* out, float* d, bool stream),
              (in, n, out, d, stream))
HALF_DISPATCH(bf16_encode, (const float* in, std::size_t n, std::byte* out, const Rng* rng),
              (in, n, out, rng))
HALF_DISPATCH(bf16_decode, (const std::byte* in, std::size_t n, float* out, bool add),
              (in, n, out, add))

}  // namespace

bool kernel::encode_half(const float* in, std::size_t n, std::byte* out) {
  return fp16_encode_dispatch(in, n, out);
}
bool kernel::decode_half(const std::byte* in, std::size_t n, float* out) {
  return fp16_decode_dispatch(in, n, out, false);
}

namespace {

class HalfCompressor : public Compressor {
 public:
  std::size_t max_encoded_bytes(std::size_t n) const noexcept override {
    return PayloadHeader::kSize + 2 * n;
  }
  std::optional<std::size_t> encoded_bytes(std::size_t n) const noexcept override {
    return max_encoded_bytes(n);
  }

 protected:
  explicit HalfCompressor(const CompressionConfig& config) : Compressor(config) {}
  std::size_t body_bytes(const PayloadHeader& h) const noexcept override {
    return 2 * static_cast<std::size_t>(h.count);
  }
};

class Fp16Compressor final : public HalfCompressor {
 public:
  explicit Fp16Compressor(const CompressionConfig& config) : HalfCompressor(config) {}

 protected:
  void fill_header(PayloadHeader&) const noexcept override {}

  std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng&,
                          PayloadHeader& header) const override {
    if (fp16_encode_dispatch(input.data(), input.size(), body.data())) {
      header.flags |= PayloadHeader::kNonFinite;
    }
    return 2 * input.size();
  }

  std::size_t range_granule() const noexcept override { return 8; }
  float flag_free_magnitude() const noexcept override { return 65504.0f; }  // fp16 max
  bool encode_range(std::span<const float> x, std::size_t, std::size_t begin,
                    std::span<std::byte> body, const Rng&) const override {
    return fp16_encode_dispatch(x.data(), x.size(), body.data() + 2 * begin);
  }
  void decode_range(std::span<const std::byte> body, std::size_t, std::size_t begin,
                    std::span<float> out) const override {
    fp16_decode_dispatch(body.data() + 2 * begin, out.size(), out.data(), false);
  }

 public:
  // encode_range plus decode_range of the same range in one loop (see fp16_encode_reconstruct).
  bool encode_range_reconstruct(std::span<const float> x, std::size_t begin,
                                std::span<std::byte> body, float* d, bool stream) const {
    return fp16_encode_reconstruct_dispatch(x.data(), x.size(), body.data() + 2 * begin, d, stream);
  }

 protected:
  void decode_body(const PayloadHeader& h, std::span<const std::byte> body, std::span<float> out,
                   bool add) const override {
    if (fp16_decode_dispatch(body.data(), out.size(), out.data(), add) && !h.non_finite()) {
      corrupt("fp16 value (NaN/Inf in an unflagged payload)");
    }
  }
  void decode_range_add(const PayloadHeader& h, std::span<const std::byte> body, std::size_t begin,
                        std::span<float> out) const override {
    if (fp16_decode_dispatch(body.data() + 2 * begin, out.size(), out.data(), true) &&
        !h.non_finite()) {
      corrupt("fp16 value (NaN/Inf in an unflagged payload)");
    }
  }
};

class Bf16Compressor final : public HalfCompressor {
 public:
  explicit Bf16Compressor(const CompressionConfig& config) : HalfCompressor(config) {}

 protected:
  void fill_header(PayloadHeader& h) const noexcept override {
    h.variant = config_.stochastic_rounding ? 1 : 0;
  }

  std::size_t encode_body(std::span<const float> input, std::span<std::byte> body, Rng& rng,
                          PayloadHeader& header) const override {
    if (bf16_encode_dispatch(input.data(), input.size(), body.data(),
                             config_.stochastic_rounding ? &rng : nullptr)) {
      header.flags |= PayloadHeader::kNonFinite;
    }
    return 2 * input.size();
  }

  std::size_t range_granule() const noexcept override { return 8; }
  // The largest finite bf16: round to nearest and stochastic rounding both stay at or below it.
  float flag_free_magnitude() const noexcept override {
    return std::bit_cast<float>(std::uint32_t{0x7f7f0000u});
  }
  bool encode_range(std::span<const float> x, std::size_t, std::size_t begin,
                    std::span<std::byte> body, const Rng& rng) const override {
    const Rng at = rng.at(rng.offset() + begin);
    return bf16_encode_dispatch(x.data(), x.size(), body.data() + 2 * begin,
                                config_.stochastic_rounding ? &at : nullptr);
  }
  void decode_range(std::span<const std::byte> body, std::size_t, std::size_t begin,
                    std::span<float> out) const override {
    bf16_decode_dispatch(body.data() + 2 * begin, out.size(), out.data(), false);
  }

  void decode_body(const PayloadHeader& h, std::span<const std::byte> body, std::span<float> out,
                   bool add) const override {
    if (bf16_decode_dispatch(body.data(), out.size(), out.data(), add) && !h.non_finite()) {
      corrupt("bf16 value (NaN/Inf in an unflagged payload)");
    }
  }
  void decode_range_add(const PayloadHeader& h, std::span<const std::byte> body, std::size_t begin,
                        std::span<float> out) const override {
    if (bf16_decode_dispatch(body.data() + 2 * begin, out.size(), out.data(), true) &&
        !h.non_finite()) {
      corrupt("bf16 value (NaN/Inf in an unflagged payload)");
    }
  }
};

}  // namespace

std::unique_ptr<Compressor> make_fp16_compressor(const CompressionConfig& config) {
  return std::make_unique<Fp16Compressor>(config);
}

bool encodes_with_reconstruction(const Compressor& compressor) {
  return dynamic_cast<const Fp16Compressor*>(&compressor) != nullptr ||
         qsgd_encodes_with_reconstruction(compressor);
}

bool encode_range_reconstruct(const Compressor& compressor, std::span<const float> x, std::size_t n,
                              std::size_t begin, std::span<std::byte> body, const Rng& rng,
                              float* d, bool stream, const PrefetchHint& next) {
  if (const auto* fp16 = dynamic_cast<const Fp16Compressor*>(&compressor)) {
    return fp16->encode_range_reconstruct(x, begin, body, d, stream);
  }
  return qsgd_encode_range_reconstruct(compressor, x, n, begin, body, rng, d, next);
}

std::unique_ptr<Compressor> make_bf16_compressor(const CompressionConfig& config) {
  return std::make_unique<Bf16Compressor>(config);
}

}  // namespace frugal::compression
