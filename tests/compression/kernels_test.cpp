// Exact expectations on hand-made vectors, round trips at awkward lengths and alignments, and
// bit-identical payloads across instruction sets.

#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "frugal/compression/half.hpp"
#include "frugal/compression/payload.hpp"
#include "test_util.hpp"

namespace frugal::compression {
namespace {

using testing::all_configs;
using testing::config_of;
using testing::encode;
using testing::gaussian;
using testing::round_trip;

TEST(Raw, RoundTripIsExact) {
  const auto c = make_compressor(config_of(Method::None));
  const std::vector<float> x = {0.0f, -0.0f, 1.5f, -3.25e-30f, 1e30f, 7.0f, -1.0f};
  EXPECT_EQ(round_trip(*c, x, Rng(1, 0, 0)), x);
  EXPECT_EQ(c->encoded_bytes(7), PayloadHeader::kSize + 28);
}

TEST(Fp16, HandMadeValues) {
  const auto c = make_compressor(config_of(Method::Fp16));
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties to even gives 1; 1 + 3 * 2^-11 is
  // halfway between 1 + 2^-10 and 1 + 2^-9 and goes to the even 1 + 2^-9.
  const std::vector<float> x = {0.0f,
                                -0.0f,
                                1.0f,
                                -2.5f,
                                65504.0f,
                                0x1.0p-14f,
                                0x1.0p-24f,
                                0x1.0p-26f,
                                1.0f + 0x1.0p-11f,
                                1.0f + 0x1.8p-10f,
                                0.1f,
                                -65519.0f};
  const std::vector<float> want = {0.0f,        -0.0f,      1.0f, -2.5f, 65504.0f,
                                   0x1.0p-14f,  0x1.0p-24f, 0.0f, 1.0f,  1.0f + 0x1.0p-9f,
                                   0x1.998p-4f, -65504.0f};
  const auto y = round_trip(*c, x, Rng(1, 0, 0));
  for (std::size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(std::bit_cast<std::uint32_t>(y[i]), std::bit_cast<std::uint32_t>(want[i])) << i;
  }
}

TEST(Fp16, ScalarConversionMatchesHardwareOnEveryHalf) {
  // Every binary16 value converts to float and back unchanged (NaNs stay NaN).
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(float_to_half(f) & 0x7e00u, 0x7e00u);
    } else {
      ASSERT_EQ(float_to_half(f), h) << h;
    }
  }
  // Random float bit patterns through both kernel paths: identical payloads.
  std::mt19937 gen(7);
  std::vector<float> x(4099);
  for (auto& v : x) v = std::bit_cast<float>(static_cast<std::uint32_t>(gen()));
  for (std::size_t i = 0; i < x.size(); i += 3) x[i] = std::ldexp(x[i] - std::trunc(x[i]), -14);
  CompressionConfig cfg = config_of(Method::Fp16);
  cfg.non_finite = NonFinitePolicy::Flag;
  const auto c = make_compressor(cfg);
  Rng rng(1, 0, 0);
  const std::vector<std::byte> b = encode(*c, x, rng);
  for (SimdLevel level : testing::lower_levels()) {
    std::vector<std::byte> a;
    testing::with_level(level, [&] { a = encode(*c, x, rng); });
    EXPECT_EQ(a, b) << static_cast<int>(level);
  }
}

TEST(Fp16, OverflowAndNonFiniteAreReported) {
  const auto c = make_compressor(config_of(Method::Fp16));
  Rng rng(1, 0, 0);
  for (float bad : {65520.0f, -1e6f, std::numeric_limits<float>::infinity(),
                    std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> x(37, 1.0f);
    x[33] = bad;
    EXPECT_EQ(testing::code_of([&] { encode(*c, x, rng); }), ErrorCode::InvalidArgument) << bad;
  }
}

TEST(Bf16, RoundToNearestEven) {
  const auto c = make_compressor(config_of(Method::Bf16));
  // bf16 keeps 7 mantissa bits. 1 + 2^-8 ties to 1; 1 + 3 * 2^-8 ties to the even 1 + 2^-6;
  // 1 + 2^-8 + 2^-20 is above the tie and rounds up to 1 + 2^-7.
  const std::vector<float> x = {1.0f + 0x1.0p-8f, 1.0f + 0x1.8p-7f, 1.0f + 0x1.0p-8f + 0x1.0p-20f,
                                -3.0f, 0.0f};
  const std::vector<float> want = {1.0f, 1.0f + 0x1.0p-6f, 1.0f + 0x1.0p-7f, -3.0f, 0.0f};
  EXPECT_EQ(round_trip(*c, x, Rng(1, 0, 0)), want);
}

TEST(Bf16, StochasticRoundingPicksANeighbour) {
  CompressionConfig cfg = config_of(Method::Bf16);
  cfg.stochastic_rounding = true;
  const auto c = make_compressor(cfg);
  const std::vector<float> x(1000, 1.0f + 0x1.0p-9f);  // a quarter of the way to 1 + 2^-7
  const auto y = round_trip(*c, x, Rng(3, 0, 0));
  std::size_t up = 0;
  for (float v : y) {
    ASSERT_TRUE(v == 1.0f || v == 1.0f + 0x1.0p-7f) << v;
    up += v > 1.0f;
  }
  EXPECT_GT(up, 150u);  // expected 250, sd 14
  EXPECT_LT(up, 350u);
}

// TernGrad's clipping: one outlier no longer sets its bucket's scale. The scale is
// clip_sigma × the bucket's RMS; every value at or beyond it is sent as ±scale, the rest keep
// their Bernoulli(|x| / scale). The header's variant says the sender clipped, and a receiver
// configured without clipping refuses the payload (Mismatch) instead of misreading a config.
TEST(Ternary, ClipSigmaBoundsTheScaleByTheBucketsRms) {
  CompressionConfig c = config_of(Method::Ternary);
  c.bucket = 512;
  std::vector<float> x = gaussian(512, 3);
  x[100] = 100.0f;
  double squares = 0;
  for (float v : x) squares += static_cast<double>(v) * v;
  const float rms = static_cast<float>(std::sqrt(squares / 512));
  for (const float clip : {0.0f, 2.5f}) {
    SCOPED_TRACE(clip);
    c.clip_sigma = clip;
    const auto compressor = make_compressor(c);
    std::vector<std::byte> out(compressor->max_encoded_bytes(x.size()));
    Rng rng(1, 0, 0);
    const std::size_t bytes = compressor->encode(x, out, rng);
    EXPECT_EQ(read_header(std::span(out).first(bytes)).variant, clip > 0 ? 1 : 0);
    std::vector<float> y(x.size());
    compressor->decode(std::span(out).first(bytes), y);
    const float scale = clip > 0 ? clip * rms : 100.0f;
    std::size_t sent = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      ASSERT_TRUE(y[i] == 0.0f || std::abs(std::abs(y[i]) - scale) <= 1e-5f * scale)
          << i << ": " << y[i];
      if (std::abs(x[i]) >= scale) {
        EXPECT_EQ(y[i], std::copysign(scale, x[i])) << i;
      }
      sent += y[i] != 0.0f;
    }
    // Without clipping the outlier leaves each other element a ~1% chance (E|x| / 100); with
    // it ~7% (the outlier still weighs in the RMS: 2.5 × 4.5).
    if (clip > 0) {
      EXPECT_GT(sent, 20u);
    } else {
      EXPECT_LT(sent, 15u);
    }
    CompressionConfig other = c;
    other.clip_sigma = clip > 0 ? 0.0f : 2.5f;
    try {
      make_compressor(other)->decode(std::span(out).first(bytes), y);
      ADD_FAILURE() << "a payload of the other clip setting was decoded";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch);
    }
  }
  c.clip_sigma = -1.0f;
  try {
    make_compressor(c);
    ADD_FAILURE() << "negative clip_sigma accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("clip_sigma"), std::string::npos) << e.what();
  }
}

TEST(OneBit, MeanAbsScalePerChunk) {
  CompressionConfig cfg = config_of(Method::OneBit);
  cfg.bucket = 8;
  const auto c = make_compressor(cfg);
  // chunk 1: mean |x| = 2.5; chunk 2 (partial, 3 elements): mean |x| = 2.
  const std::vector<float> x = {1, -2, 3, -4, 1, -2, 3, -4, -1, 2, 3};
  const std::vector<float> want = {2.5, -2.5, 2.5, -2.5, 2.5, -2.5, 2.5, -2.5, -2, 2, 2};
  EXPECT_EQ(round_trip(*c, x, Rng(1, 0, 0)), want);
  EXPECT_EQ(c->encoded_bytes(11), PayloadHeader::kSize + 2 * 4 + 2);
}

TEST(OneBit, SignMeansPreserveChunkSums) {
  CompressionConfig cfg = config_of(Method::OneBit);
  cfg.bucket = 8;
  cfg.scaling = OneBitScaling::SignMeans;
  const auto c = make_compressor(cfg);
  const std::vector<float> x = {1, -2, 3, -4, 5, 0, 2, -6, 4};
  // chunk 1: non-negatives {1,3,5,0,2} mean 2.2; negatives {-2,-4,-6} mean -4; chunk 2: {4}.
  const std::vector<float> want = {2.2f, -4, 2.2f, -4, 2.2f, 2.2f, 2.2f, -4, 4};
  const auto y = round_trip(*c, x, Rng(1, 0, 0));
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_FLOAT_EQ(y[i], want[i]) << i;
}

TEST(Ternary, ExtremesAndZerosAreExact) {
  CompressionConfig cfg = config_of(Method::Ternary);
  cfg.bucket = 8;
  const auto c = make_compressor(cfg);
  // Per bucket, |x| = max is kept with probability 1 and 0 with probability 0.
  const std::vector<float> x = {0, 3, -3, 0, 0, 3, 0, -3, /**/ 0, 0, 0, 0, 0, 0, 0, 0, /**/ -0.5f};
  for (std::uint64_t seed = 0; seed < 20; ++seed) {
    EXPECT_EQ(round_trip(*c, x, Rng(seed, 0, 0)), x);
  }
  // Values take only {-s, 0, s}.
  const auto g = gaussian(1000, 3);
  const auto y = round_trip(*c, g, Rng(1, 0, 0));
  for (std::size_t b = 0; b < g.size(); b += 8) {
    float s = 0;
    for (std::size_t i = b; i < std::min(g.size(), b + 8); ++i) s = std::max(s, std::abs(g[i]));
    for (std::size_t i = b; i < std::min(g.size(), b + 8); ++i) {
      ASSERT_TRUE(y[i] == 0.0f || y[i] == std::copysign(s, g[i])) << i;
    }
  }
}

TEST(Qsgd, ExactLevelsAreReproduced) {
  for (int bits : {2, 4, 8}) {
    CompressionConfig cfg = config_of(Method::Qsgd);
    cfg.bucket = 16;
    cfg.bits = bits;
    cfg.norm = QsgdNorm::Max;
    const auto c = make_compressor(cfg);
    const int s = (1 << bits) - 1;
    // With the max norm m, values l * m / s sit exactly on levels: no randomness.
    std::vector<float> x(21);
    for (std::size_t i = 0; i < x.size(); ++i) {
      const int l = static_cast<int>(i * 7) % (s + 1);
      x[i] = (i % 3 == 0 ? -1.0f : 1.0f) * static_cast<float>(l) / static_cast<float>(s) * 4.0f;
    }
    x[0] = 4.0f;    // the max of bucket 1
    x[16] = -4.0f;  // and of bucket 2
    for (std::uint64_t seed = 0; seed < 5; ++seed) {
      const auto y = round_trip(*c, x, Rng(seed, 0, 0));
      for (std::size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(y[i], x[i], 1e-5f) << bits << " " << i;
    }
  }
}

TEST(Qsgd, LevelsAreNeighbours) {
  CompressionConfig cfg = config_of(Method::Qsgd);
  cfg.bits = 2;  // s = 3
  cfg.bucket = 8;
  const auto c = make_compressor(cfg);
  const std::vector<float> x = {3, 4, 0, 0, 0, 0, 0, 0};  // norm 5: levels 1.8 and 2.4
  for (std::uint64_t seed = 0; seed < 50; ++seed) {
    const auto y = round_trip(*c, x, Rng(seed, 0, 0));
    EXPECT_TRUE(y[0] == 5.0f / 3 || y[0] == 10.0f / 3) << y[0];
    EXPECT_TRUE(y[1] == 10.0f / 3 || y[1] == 5.0f) << y[1];
    for (std::size_t i = 2; i < 8; ++i) EXPECT_EQ(y[i], 0.0f);
  }
}

// Error each method may make on N(0, 1) data, per element (loose; catches garbage, not bias).
double tolerance_for(const CompressionConfig& c) {
  switch (c.method) {
    case Method::None:
      return 0.0;
    case Method::Fp16:
      return 2e-3;
    case Method::Bf16:
      return 2e-2;
    default:
      return 1e9;  // lossy: checked by structure and statistics elsewhere
  }
}

TEST(AllMethods, AwkwardLengthsAlignmentsAndIsaParity) {
  for (const auto& [name, cfg] : all_configs()) {
    const auto c = make_compressor(cfg);
    for (std::size_t n : {0, 1, 7, 8, 9, 63, 64, 65, 127, 129, 512 + 5, 3 * 512 + 9, 5000}) {
      // Input one float past an aligned start, payload one byte past: nothing may assume
      // alignment.
      const auto base = gaussian(n + 1, static_cast<std::uint32_t>(n));
      const std::span<const float> x(base.data() + 1, n);
      std::vector<std::byte> storage(c->max_encoded_bytes(n) + 1);
      const std::span<std::byte> out(storage.data() + 1, c->max_encoded_bytes(n));
      Rng rng(42, 1, 2, 1000);
      const std::size_t bytes = c->encode(x, out, rng);
      EXPECT_EQ(rng.offset(), 1000 + n);
      if (auto exact = c->encoded_bytes(n)) {
        EXPECT_EQ(bytes, *exact) << name << " " << n;
      }
      EXPECT_LE(bytes, c->max_encoded_bytes(n));

      std::vector<float> ybase(n + 1, 0.0f);
      const std::span<float> y(ybase.data() + 1, n);
      c->decode(out.first(bytes), y);
      const double tol = tolerance_for(cfg);
      for (std::size_t i = 0; i < n; ++i) {
        ASSERT_LE(std::abs(y[i] - x[i]), tol * (1 + std::abs(x[i])))
            << name << " " << n << " " << i;
        ASSERT_TRUE(std::isfinite(y[i]));
      }
      // decode_add adds exactly what decode writes.
      std::vector<float> acc(n, 1.0f);
      c->decode_add(out.first(bytes), acc);
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(acc[i], 1.0f + y[i]) << name << " " << i;

      // The lower instruction-set levels (scalar, and AVX2 under AVX-512) produce the same
      // bytes and decodes.
      for (SimdLevel level : testing::lower_levels()) {
        std::vector<std::byte> other(c->max_encoded_bytes(n));
        Rng rng2(42, 1, 2, 1000);
        std::size_t other_bytes = 0;
        std::vector<float> y2(n);
        testing::with_level(level, [&] {
          other_bytes = c->encode(x, other, rng2);
          c->decode(std::span<const std::byte>(other).first(other_bytes), y2);
        });
        ASSERT_EQ(other_bytes, bytes) << name << " " << n << " level " << static_cast<int>(level);
        EXPECT_TRUE(
            std::equal(other.begin(), other.begin() + static_cast<long>(bytes), out.begin()))
            << name << " " << n << " level " << static_cast<int>(level);
        EXPECT_TRUE(std::equal(y2.begin(), y2.end(), y.begin()))
            << name << " " << n << " level " << static_cast<int>(level);
      }
    }
  }
}

TEST(AllMethods, ChunksEncodeLikeTheWhole) {
  // Encoding [0, a) at offset o and [a, n) at offset o + a (a a multiple of the bucket)
  // reconstructs exactly what one encode of [0, n) does: chunks can be encoded in parallel.
  for (const auto& [name, cfg] : all_configs()) {
    if (cfg.method == Method::TopK) continue;  // selection is global by definition
    const auto c = make_compressor(cfg);
    const std::size_t n = 4096 + 77, a = 2048;
    const auto x = gaussian(n, 5);
    const Rng rng(9, 3, 11, 500);
    const auto whole = round_trip(*c, x, rng);
    std::vector<float> parts(n);
    const std::span<const float> xs(x);
    const auto first = round_trip(*c, xs.first(a), rng.at(500));
    const auto second = round_trip(*c, xs.subspan(a), rng.at(500 + a));
    std::copy(first.begin(), first.end(), parts.begin());
    std::copy(second.begin(), second.end(), parts.begin() + a);
    EXPECT_EQ(whole, parts) << name;
  }
}

TEST(AllMethods, SameSeedSameBytesOtherSeedOtherBytes) {
  for (const auto& [name, cfg] : all_configs()) {
    const auto c = make_compressor(cfg);
    const auto x = gaussian(1000, 1);
    Rng a(5, 1, 7), b(5, 1, 7), other(5, 2, 7);
    const auto pa = encode(*c, x, a), pb = encode(*c, x, b), po = encode(*c, x, other);
    EXPECT_EQ(pa, pb) << name;
    if (c->unbiased() && cfg.method != Method::None) {
      EXPECT_NE(pa, po) << name;
    }
  }
}

TEST(AllMethods, NonFiniteInputIsAnErrorOrAFlag) {
  for (auto [name, cfg] : all_configs()) {
    for (float bad :
         {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
      auto x = gaussian(300, 2);
      x[201] = bad;
      cfg.non_finite = NonFinitePolicy::Error;
      auto c = make_compressor(cfg);
      Rng rng(1, 0, 0);
      EXPECT_EQ(testing::code_of([&] { encode(*c, x, rng); }), ErrorCode::InvalidArgument) << name;
      cfg.non_finite = NonFinitePolicy::Flag;
      c = make_compressor(cfg);
      const auto payload = encode(*c, x, rng);
      EXPECT_TRUE(read_header(payload).non_finite()) << name;
      std::vector<float> y(x.size());
      c->decode(payload, y);  // a flagged payload still decodes: the caller decides
      // Finite inputs are never flagged.
      const auto clean = gaussian(300, 2);
      EXPECT_FALSE(read_header(encode(*c, clean, rng)).non_finite()) << name;
    }
  }
}

TEST(OneBit, HundredMillionElements) {
  // 10^8 floats (400 MB) through the cheapest kernel: lengths past 2^26 and buckets/bit offsets
  // at that scale. Other kernels share the same loop structure and are covered at smaller n.
  CompressionConfig cfg = config_of(Method::OneBit);
  cfg.bucket = 4096;
  const auto c = make_compressor(cfg);
  const std::size_t n = 100'000'000;
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = (i % 3 == 0) ? -1.0f - (i % 5) : 1.0f;
  Rng rng(1, 0, 0);
  std::vector<std::byte> payload(c->max_encoded_bytes(n));
  ASSERT_EQ(c->encode(x, payload, rng), *c->encoded_bytes(n));
  std::fill(x.begin(), x.end(), 0.0f);
  c->decode_add(payload, x);
  for (std::size_t i : {std::size_t{0}, std::size_t{1}, n / 2 + 1, n - 2, n - 1}) {
    EXPECT_EQ(x[i] < 0, i % 3 == 0) << i;
  }
}

TEST(Config, InvalidConfigsAreRejected) {
  auto bad = [](CompressionConfig c) { return testing::code_of([&] { make_compressor(c); }); };
  CompressionConfig c = config_of(Method::Qsgd);
  c.bits = 3;
  EXPECT_EQ(bad(c), ErrorCode::InvalidArgument);
  c = config_of(Method::Ternary);
  c.bucket = 12;
  EXPECT_EQ(bad(c), ErrorCode::InvalidArgument);
  c = config_of(Method::TopK);
  c.density = 0.0;
  EXPECT_EQ(bad(c), ErrorCode::InvalidArgument);
  c.density = 0.5;
  c.tolerance = 1.0;
  EXPECT_EQ(bad(c), ErrorCode::InvalidArgument);
}

TEST(Encode, SmallOutputBufferIsRejected) {
  const auto c = make_compressor(config_of(Method::Fp16));
  const std::vector<float> x(10, 1.0f);
  std::vector<std::byte> out(c->max_encoded_bytes(10) - 1);
  Rng rng(1, 0, 0);
  EXPECT_EQ(testing::code_of([&] { c->encode(x, out, rng); }), ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace frugal::compression
