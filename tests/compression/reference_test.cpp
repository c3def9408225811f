// The stochastic encoders against plain one-element-at-a-time reference encoders written from
// the documented definitions (Rng::bits32 per element, the payload layout of each method).
// The SIMD kernels process 8 or 32 elements at a time and pack levels with shuffles; these
// tests pin their bytes to the definition on both instruction-set levels, for bucket sizes
// that exercise every loop of the kernels (whole 32-element blocks, 8-element groups, partial
// groups) and for stream offsets whose low 32 bits wrap inside a group.

#include <cmath>
#include <cstring>
#include <limits>

#include "test_util.hpp"

namespace frugal::compression {
namespace {

using testing::config_of;
using testing::gaussian;

constexpr std::size_t kHeader = PayloadHeader::kSize;

float uniform_of(std::uint32_t r) {
  return static_cast<float>(r >> 8) * 0x1.0p-24f;
}

void put_f32(std::vector<std::byte>& out, std::size_t at, float v) {
  std::memcpy(out.data() + at, &v, 4);
}

void set_bit(std::vector<std::byte>& out, std::size_t at, std::size_t bit) {
  out[at + bit / 8] |= static_cast<std::byte>(1u << (bit % 8));
}

// The kernels' lane-wise reductions: lane l accumulates elements l, l + 8, ... of the bucket
// (missing lanes of a partial group read +0), then a fixed tree combines the lanes.
float lane_sum_of_squares(std::span<const float> x) {
  float acc[8] = {};
  for (std::size_t i = 0; i < x.size(); ++i) {
    const float sq = x[i] * x[i];
    acc[i % 8] = acc[i % 8] + sq;
  }
  const float a = (acc[0] + acc[4]) + (acc[2] + acc[6]);
  const float b = (acc[1] + acc[5]) + (acc[3] + acc[7]);
  return a + b;
}

std::vector<std::byte> reference_qsgd(std::span<const float> x, std::size_t bucket, int bits,
                                      bool max_norm, const Rng& rng) {
  const std::size_t n = x.size();
  const std::size_t nb = (n + bucket - 1) / bucket;
  const std::size_t plane = (n + 7) / 8;
  const std::size_t level_bytes = (n * static_cast<std::size_t>(bits) + 7) / 8;
  std::vector<std::byte> body(4 * nb + plane + level_bytes);
  const std::size_t signs = 4 * nb, levels_at = 4 * nb + plane;
  const float s = static_cast<float>((1 << bits) - 1);
  for (std::size_t b = 0; b < nb; ++b) {
    const std::span<const float> xb = x.subspan(b * bucket, std::min(bucket, n - b * bucket));
    bool bad = false;
    float m = 0.0f;
    for (const float v : xb) {
      bad |= !std::isfinite(v);
      m = std::max(m, std::abs(v));
    }
    float norm = max_norm ? m : std::sqrt(lane_sum_of_squares(xb));
    if (bad) norm = std::numeric_limits<float>::quiet_NaN();
    put_f32(body, 4 * b, norm);
    const float scale = norm > 0.0f && std::isfinite(norm) ? s / norm : 0.0f;
    for (std::size_t i = 0; i < xb.size(); ++i) {
      const std::size_t j = b * bucket + i;
      float level = std::abs(xb[i]) * scale;
      if (!(level > 0.0f)) level = 0.0f;
      if (!(level < s)) level = s;
      const auto floor = static_cast<std::uint32_t>(level);
      const float frac = level - static_cast<float>(floor);
      const std::uint32_t q = floor + (uniform_of(rng.bits32(rng.offset() + j)) < frac ? 1 : 0);
      if (std::signbit(xb[i])) set_bit(body, signs, j);
      for (int k = 0; k < bits; ++k) {
        if ((q >> k) & 1u) set_bit(body, levels_at, j * static_cast<std::size_t>(bits) + k);
      }
    }
  }
  return body;
}

std::vector<std::byte> reference_ternary(std::span<const float> x, std::size_t bucket,
                                         const Rng& rng) {
  const std::size_t n = x.size();
  const std::size_t nb = (n + bucket - 1) / bucket;
  const std::size_t plane = (n + 7) / 8;
  std::vector<std::byte> body(4 * nb + 2 * plane);
  for (std::size_t b = 0; b < nb; ++b) {
    const std::span<const float> xb = x.subspan(b * bucket, std::min(bucket, n - b * bucket));
    bool bad = false;
    float s = 0.0f;
    for (const float v : xb) {
      bad |= !std::isfinite(v);
      s = std::max(s, std::abs(v));
    }
    if (bad) s = std::numeric_limits<float>::quiet_NaN();
    put_f32(body, 4 * b, s);
    const float inv = s > 0.0f ? 1.0f / s : 0.0f;
    for (std::size_t i = 0; i < xb.size(); ++i) {
      const std::size_t j = b * bucket + i;
      const float ax = std::abs(xb[i]);
      const bool keep =
          uniform_of(rng.bits32(rng.offset() + j)) < ax * inv || (ax == s && ax > 0.0f);
      if (std::signbit(xb[i])) set_bit(body, 4 * nb, j);
      if (keep) set_bit(body, 4 * nb + plane, j);
    }
  }
  return body;
}

std::vector<std::byte> reference_bf16_sr(std::span<const float> x, const Rng& rng) {
  std::vector<std::byte> body(2 * x.size());
  for (std::size_t j = 0; j < x.size(); ++j) {
    std::uint32_t u;
    std::memcpy(&u, &x[j], 4);
    const std::uint32_t r = rng.bits32(rng.offset() + j) & 0xffffu;
    const auto h = static_cast<std::uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u
                                                                              : (u + r) >> 16);
    std::memcpy(body.data() + 2 * j, &h, 2);
  }
  return body;
}

// Input with the awkward cases the kernels special-case: zeros, negative zeros, exact bucket
// maxima, denormals.
std::vector<float> awkward_input(std::size_t n, std::uint32_t seed) {
  auto x = gaussian(n, seed);
  for (std::size_t i = 0; i < n; i += 13) x[i] = 0.0f;
  for (std::size_t i = 5; i < n; i += 29) x[i] = -0.0f;
  for (std::size_t i = 7; i < n; i += 31) x[i] = 1e-40f;
  if (n > 3) x[3] = 50.0f;  // one dominant value: many levels round to 0
  return x;
}

void expect_body(const Compressor& c, std::span<const float> x, const Rng& rng,
                 const std::vector<std::byte>& want, const std::string& what) {
  for (SimdLevel level : testing::supported_levels()) {
    Rng r = rng;
    std::vector<std::byte> got;
    testing::with_level(level, [&] { got = testing::encode(c, x, r); });
    ASSERT_EQ(got.size(), kHeader + want.size()) << what;
    std::size_t first_bad = want.size();
    for (std::size_t i = 0; i < want.size(); ++i) {
      if (got[kHeader + i] != want[i]) {
        first_bad = i;
        break;
      }
    }
    EXPECT_EQ(first_bad, want.size())
        << what << " level " << static_cast<int>(level) << ": body byte " << first_bad << " of "
        << want.size() << " differs from the reference";
  }
}

// Offsets: aligned, unaligned, and low 32 bits wrapping inside and at the end of a group.
const std::uint64_t kOffsets[] = {0, 1003, (1ull << 32) - 5, (1ull << 32) - 8, (7ull << 32) - 37};

TEST(Reference, QsgdMatchesTheDefinitionByteForByte) {
  for (int bits : {2, 4, 8}) {
    for (bool max_norm : {false, true}) {
      for (std::size_t bucket : {8, 16, 40, 64, 104, 512}) {
        for (std::size_t n : {1, 7, 33, 100, 1000, 4099}) {
          CompressionConfig cfg = config_of(Method::Qsgd);
          cfg.bits = bits;
          cfg.bucket = bucket;
          cfg.norm = max_norm ? QsgdNorm::Max : QsgdNorm::L2;
          const auto c = make_compressor(cfg);
          const auto x = awkward_input(n, static_cast<std::uint32_t>(n + bucket));
          for (std::uint64_t offset : kOffsets) {
            const Rng rng(3, 1, 4, offset);
            expect_body(*c, x, rng, reference_qsgd(x, bucket, bits, max_norm, rng),
                        "qsgd" + std::to_string(bits) + (max_norm ? " max" : " l2") + " bucket " +
                            std::to_string(bucket) + " n " + std::to_string(n) + " offset " +
                            std::to_string(offset));
          }
        }
      }
    }
  }
}

TEST(Reference, QsgdNonFiniteAndOverflowingBuckets) {
  // A bucket holding NaN or Inf gets a NaN norm; one whose squares overflow float (finite
  // input) an Inf norm; both quantize to level 0. The L2 kernel only inspects elements when the
  // sum of squares is not finite, so every case is checked at every level.
  const float kInf = std::numeric_limits<float>::infinity();
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  for (bool max_norm : {false, true}) {
    for (float bad : {3e19f, -kInf, kNaN}) {
      for (std::size_t bucket : {8, 64, 512}) {
        CompressionConfig cfg = config_of(Method::Qsgd);
        cfg.bucket = bucket;
        cfg.norm = max_norm ? QsgdNorm::Max : QsgdNorm::L2;
        cfg.non_finite = NonFinitePolicy::Flag;
        const auto c = make_compressor(cfg);
        auto x = awkward_input(1500, 9);
        x[700] = bad;
        x[1499] = bad;  // in the partial last bucket
        const Rng rng(1, 2, 3, 77);
        expect_body(*c, x, rng, reference_qsgd(x, bucket, 4, max_norm, rng),
                    std::string("qsgd4 ") + (max_norm ? "max" : "l2") + " bad " +
                        std::to_string(bad) + " bucket " + std::to_string(bucket));
      }
    }
  }
}

TEST(Reference, TernaryMatchesTheDefinitionByteForByte) {
  for (std::size_t bucket : {8, 16, 40, 64, 104, 512}) {
    for (std::size_t n : {1, 7, 33, 100, 1000, 4099}) {
      CompressionConfig cfg = config_of(Method::Ternary);
      cfg.bucket = bucket;
      const auto c = make_compressor(cfg);
      const auto x = awkward_input(n, static_cast<std::uint32_t>(n * 3 + bucket));
      for (std::uint64_t offset : kOffsets) {
        const Rng rng(8, 0, 2, offset);
        expect_body(*c, x, rng, reference_ternary(x, bucket, rng),
                    "ternary bucket " + std::to_string(bucket) + " n " + std::to_string(n) +
                        " offset " + std::to_string(offset));
      }
    }
  }
}

TEST(Reference, Bf16StochasticRoundingMatchesTheDefinitionByteForByte) {
  CompressionConfig cfg = config_of(Method::Bf16);
  cfg.stochastic_rounding = true;
  const auto c = make_compressor(cfg);
  for (std::size_t n : {1, 7, 33, 100, 1000, 4099}) {
    const auto x = awkward_input(n, static_cast<std::uint32_t>(n));
    for (std::uint64_t offset : kOffsets) {
      const Rng rng(2, 7, 1, offset);
      expect_body(*c, x, rng, reference_bf16_sr(x, rng),
                  "bf16_sr n " + std::to_string(n) + " offset " + std::to_string(offset));
    }
  }
}

}  // namespace
}  // namespace frugal::compression
