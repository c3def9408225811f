// Statistical properties: unbiasedness (within 4 sigma), QSGD's variance, top-k selection
// against a full sort, and the error-feedback invariant.

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <numeric>

#include "frugal/compression/error_feedback.hpp"
#include "frugal/compression/payload.hpp"
#include "test_util.hpp"

namespace frugal::compression {
namespace {

using testing::all_configs;
using testing::config_of;
using testing::encode;
using testing::gaussian;
using testing::round_trip;

// The variance of one element's stochastic rounding between neighbours lo < x < lo + gap with
// P(up) = p = (x - lo) / gap: gap^2 p (1 - p). Returns {variance, p}.
std::pair<double, double> rounding_variance(double x, double lo, double gap) {
  const double p = gap > 0 ? (x - lo) / gap : 0.0;
  return {gap * gap * p * (1 - p), p};
}

// The exact per-element variance and P(up) of the unbiased quantizers, from their definitions.
std::vector<std::pair<double, double>> theory(const CompressionConfig& cfg,
                                              const std::vector<float>& x) {
  std::vector<std::pair<double, double>> out(x.size());
  if (cfg.method == Method::Bf16) {
    for (std::size_t i = 0; i < x.size(); ++i) {
      const float a = std::abs(x[i]);
      const float lo = std::bit_cast<float>(std::bit_cast<std::uint32_t>(a) & 0xffff0000u);
      const float hi =
          std::bit_cast<float>((std::bit_cast<std::uint32_t>(a) & 0xffff0000u) + 0x10000u);
      out[i] = rounding_variance(a, lo, double(hi) - lo);
    }
    return out;
  }
  for (std::size_t b = 0; b < x.size(); b += cfg.bucket) {
    const std::size_t e = std::min(x.size(), b + cfg.bucket);
    double mx = 0, sq = 0;
    for (std::size_t i = b; i < e; ++i) {
      mx = std::max(mx, double(std::abs(x[i])));
      sq += double(x[i]) * x[i];
    }
    for (std::size_t i = b; i < e; ++i) {
      const double a = std::abs(x[i]);
      if (cfg.method == Method::Ternary) {
        out[i] = rounding_variance(a, 0.0, mx);
      } else {
        const double step =
            (cfg.norm == QsgdNorm::Max ? mx : std::sqrt(sq)) / ((1 << cfg.bits) - 1);
        out[i] = rounding_variance(a, std::floor(a / step) * step, step);
      }
    }
  }
  return out;
}

// The mean of `trials` decodes, each with a different seed, must be within 4 standard errors of
// x: element by element where the normal approximation holds (both outcomes expected >= 60
// times), and pooled over all elements (a sum of independent deviations, so normal by the CLT).
void expect_unbiased(const CompressionConfig& cfg, const std::vector<float>& x, int trials) {
  const auto c = make_compressor(cfg);
  ASSERT_TRUE(c->unbiased());
  const std::size_t n = x.size();
  const auto th = theory(cfg, x);
  std::vector<double> sum(n, 0.0);
  for (int t = 0; t < trials; ++t) {
    const auto y = round_trip(*c, x, Rng(1000 + t, 3, 7));
    for (std::size_t i = 0; i < n; ++i) sum[i] += y[i];
  }
  std::size_t checked = 0;
  double pooled_dev = 0, pooled_var = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const double dev = sum[i] / trials - x[i];
    const auto [var, p] = th[i];
    pooled_dev += dev;
    pooled_var += var / trials;
    const double expected_events = trials * std::min(p, 1 - p);
    if (expected_events >= 60) {
      ++checked;
      EXPECT_LE(std::abs(dev), 4 * std::sqrt(var / trials))
          << to_string(cfg.method) << " bits " << cfg.bits << " norm " << int(cfg.norm)
          << " element " << i << " x=" << x[i] << " p=" << p;
    } else if (var == 0) {
      EXPECT_NEAR(dev, 0.0, 1e-6 * (1 + std::abs(x[i]))) << "deterministic element " << i;
    }
  }
  EXPECT_LE(std::abs(pooled_dev), 4 * std::sqrt(pooled_var)) << to_string(cfg.method);
  EXPECT_GT(checked, n / 2) << "most elements should be checked individually";
}

TEST(Unbiased, Ternary) {
  CompressionConfig cfg = config_of(Method::Ternary);
  cfg.bucket = 32;
  expect_unbiased(cfg, gaussian(70, 11), 4000);
}

TEST(Unbiased, QsgdAllBitsAndNorms) {
  for (int bits : {2, 4, 8}) {
    for (QsgdNorm norm : {QsgdNorm::L2, QsgdNorm::Max}) {
      CompressionConfig cfg = config_of(Method::Qsgd);
      cfg.bucket = 32;
      cfg.bits = bits;
      cfg.norm = norm;
      expect_unbiased(cfg, gaussian(70, 12), 3000);
    }
  }
}

TEST(Unbiased, Bf16StochasticRounding) {
  CompressionConfig cfg = config_of(Method::Bf16);
  cfg.stochastic_rounding = true;
  expect_unbiased(cfg, gaussian(64, 13), 4000);
}

TEST(Qsgd, VarianceMatchesTheoryAndLemma31Bound) {
  // Alistarh et al., Lemma 3.1: E||Q(x) - x||^2 <= min(n / s^2, sqrt(n) / s) ||x||^2 with the
  // L2 norm, per bucket of n elements. The exact variance of stochastic rounding is
  // sum_i (norm / s)^2 * frac_i * (1 - frac_i); the empirical mean must match it within 5%.
  const std::size_t n = 512;
  for (int bits : {2, 4, 8}) {
    CompressionConfig cfg = config_of(Method::Qsgd);
    cfg.bucket = n;
    cfg.bits = bits;
    const auto c = make_compressor(cfg);
    const auto x = gaussian(n, 21);
    double norm2 = 0;
    for (float v : x) norm2 += static_cast<double>(v) * v;
    const double s = (1 << bits) - 1, norm = std::sqrt(norm2);
    double theory = 0;
    for (float v : x) {
      const double level = std::abs(v) / norm * s, f = level - std::floor(level);
      theory += (norm / s) * (norm / s) * f * (1 - f);
    }
    const int trials = 400;
    double mean_err = 0;
    for (int t = 0; t < trials; ++t) {
      const auto y = round_trip(*c, x, Rng(t, 0, 0));
      for (std::size_t i = 0; i < n; ++i) mean_err += std::pow(double(y[i]) - x[i], 2) / trials;
    }
    const double bound = std::min(n / (s * s), std::sqrt(double(n)) / s) * norm2;
    EXPECT_LE(mean_err, bound) << bits;
    EXPECT_NEAR(mean_err / theory, 1.0, 0.05) << bits;
  }
}

// ----- top-k ---------------------------------------------------------------------------------

// The dense vector a correct exact top-k reconstructs: the k largest |x|, ties to lower index.
std::vector<float> reference_topk(const std::vector<float>& x, std::size_t k) {
  std::vector<std::uint32_t> order(x.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](std::uint32_t a, std::uint32_t b) {
    return std::abs(x[a]) > std::abs(x[b]);
  });
  std::vector<float> y(x.size(), 0.0f);
  for (std::size_t i = 0; i < k; ++i) y[order[i]] = x[order[i]];
  return y;
}

std::vector<float> tied(std::size_t n, std::uint32_t seed) {
  auto x = gaussian(n, seed);
  for (auto& v : x) v = std::round(v * 4) / 4;  // many equal magnitudes, many zeros
  return x;
}

TEST(TopK, ExactEqualsFullSortWithDeterministicTies) {
  struct Case {
    std::size_t n, k;
  };
  // 1 << 20 + 3 takes the sampled-bracket path, the small ones the histogram path.
  for (Case cs : {Case{1, 1}, Case{7, 3}, Case{64, 64}, Case{65, 1}, Case{1000, 10},
                  Case{100000, 1000}, Case{(1 << 20) + 3, 10486}, Case{(1 << 20) + 3, 5}}) {
    for (bool with_ties : {false, true}) {
      const auto x = with_ties ? tied(cs.n, 3) : gaussian(cs.n, 4);
      CompressionConfig cfg = config_of(Method::TopK);
      cfg.k = cs.k;
      const auto c = make_compressor(cfg);
      Rng rng(1, 0, 0);
      const auto payload = encode(*c, x, rng);
      EXPECT_EQ(read_header(payload).k, cs.k);
      std::vector<float> y(cs.n);
      c->decode(payload, y);
      EXPECT_TRUE(y == reference_topk(x, cs.k)) << cs.n << " " << cs.k << " ties " << with_ties;
    }
  }
}

TEST(TopK, ExactSurvivesAMisleadingSample) {
  // The strided sample sees only tiny values while everything else is large: the bracket
  // overflows and the histogram fallback must still give the exact answer.
  const std::size_t n = 1 << 21, stride = n / 65536;
  auto x = gaussian(n, 8);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = i % stride == stride / 2 ? 1e-6f * x[i] : 1.0f + std::abs(x[i]);
  }
  CompressionConfig cfg = config_of(Method::TopK);
  cfg.density = 0.01;
  const auto c = make_compressor(cfg);
  const auto y = round_trip(*c, x, Rng(1, 0, 0));
  EXPECT_TRUE(y == reference_topk(x, c->k_for(n)));
}

TEST(TopK, SampledCountWithinToleranceAndContainsTheCore) {
  for (double tol : {0.1, 0.2, 0.5}) {
    const std::size_t n = 1 << 22;
    const auto x = gaussian(n, 17);
    CompressionConfig cfg = config_of(Method::TopK);
    cfg.density = 0.01;
    cfg.selection = TopKSelection::Sampled;
    cfg.tolerance = tol;
    const auto c = make_compressor(cfg);
    const std::size_t k = c->k_for(n);
    Rng rng(1, 0, 0);
    const auto payload = encode(*c, x, rng);
    const std::size_t count = read_header(payload).k;
    EXPECT_GE(count, std::ceil(k * (1 - tol))) << tol;
    EXPECT_LE(count, std::floor(k * (1 + tol))) << tol;
    std::vector<float> y(n);
    c->decode(payload, y);
    // Everything in the exact top ceil(k (1 - tol)) is selected, with its exact value.
    const auto core = reference_topk(x, static_cast<std::size_t>(std::ceil(k * (1 - tol))));
    std::size_t nonzero = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (core[i] != 0.0f) {
        ASSERT_EQ(y[i], x[i]) << i;
      }
      if (y[i] != 0.0f) {
        ASSERT_EQ(y[i], x[i]);
        ++nonzero;
      }
    }
    EXPECT_EQ(nonzero, count);
  }
}

TEST(TopK, SampledSurvivesAMisleadingSampleAndAgreesAcrossLevels) {
  // Sampled selection reads its sample as runs of 16 elements at n / 4096 spacing (65536
  // elements here). Case 0: the runs hold only tiny values, so the threshold admits nearly
  // everything and the collection must give up and fall back to exact selection. Case 1:
  // plain data, through the one-pass collection. Every instruction-set level agrees.
  const std::size_t n = 1 << 21, stride = n / 4096, skip = (stride - 16) / 2;
  for (int misleading : {1, 0}) {
    auto x = gaussian(n, 21);
    if (misleading) {
      for (std::size_t i = 0; i < n; ++i) {
        const std::size_t r = i % stride;
        x[i] = r >= skip && r < skip + 16 ? 1e-6f * x[i] : 1.0f + std::abs(x[i]);
      }
    }
    CompressionConfig cfg = config_of(Method::TopK);
    cfg.density = 0.01;
    cfg.selection = TopKSelection::Sampled;
    const auto c = make_compressor(cfg);
    const std::size_t k = c->k_for(n);
    Rng rng(1, 0, 0);
    const auto payload = encode(*c, x, rng);
    const std::size_t count = read_header(payload).k;
    EXPECT_GE(count, std::ceil(k * 0.8)) << misleading;
    EXPECT_LE(count, std::floor(k * 1.2)) << misleading;
    if (misleading) {
      EXPECT_EQ(count, k);  // the exact fallback
    }
    std::vector<float> y(n);
    c->decode(payload, y);
    const auto core = reference_topk(x, static_cast<std::size_t>(std::ceil(k * 0.8)));
    for (std::size_t i = 0; i < n; ++i) {
      if (core[i] != 0.0f || y[i] != 0.0f) {
        ASSERT_EQ(y[i], x[i]) << i;
      }
    }
    for (SimdLevel level : testing::lower_levels()) {
      std::vector<std::byte> other;
      testing::with_level(level, [&] {
        Rng r(1, 0, 0);
        other = encode(*c, x, r);
      });
      EXPECT_EQ(other, payload) << misleading << " level " << static_cast<int>(level);
    }
  }
}

TEST(TopK, Fp16ValuesAndDensityRounding) {
  CompressionConfig cfg = config_of(Method::TopK);
  cfg.density = 0.25;
  cfg.values = TopKValues::Fp16;
  const auto c = make_compressor(cfg);
  EXPECT_EQ(c->k_for(9), 3u);  // ceil(2.25)
  EXPECT_EQ(c->k_for(1), 1u);
  const std::vector<float> x = {0.5f, -8, 0, 0.1f, 4, 0, 0, 0, -0.25f};
  EXPECT_EQ(round_trip(*c, x, Rng(1, 0, 0)), (std::vector<float>{0.5f, -8, 0, 0, 4, 0, 0, 0, 0}));
  // 3 fp16 values, then the indices of 9 elements as one bitmap chunk (coding byte, 2 bytes).
  std::vector<std::byte> payload(c->max_encoded_bytes(9));
  Rng rng(1, 0, 0);
  EXPECT_EQ(c->encode(x, payload, rng), PayloadHeader::kSize + 3 * 2 + 1 + 2);
  EXPECT_EQ(c->encoded_bytes(9), std::nullopt);
}

// ----- error feedback ------------------------------------------------------------------------

TEST(ErrorFeedback, InvariantHoldsForEveryMethod) {
  // Over T steps: sum(applied) + residual_T == sum(grads), to float rounding.
  const std::size_t n = 777;
  const int steps = 25;
  for (const auto& [name, cfg] : all_configs()) {
    const auto c = make_compressor(cfg);
    ErrorFeedback ef(n);
    std::vector<double> sum_in(n, 0.0), sum_applied(n, 0.0);
    std::vector<std::byte> out(c->max_encoded_bytes(n));
    std::vector<float> applied(n);
    for (int t = 0; t < steps; ++t) {
      const auto g = gaussian(n, 100 + t);
      Rng rng(7, 0, t);
      encode_with_feedback(*c, ef, g, out, rng, applied);
      for (std::size_t i = 0; i < n; ++i) {
        sum_in[i] += g[i];
        sum_applied[i] += applied[i];
      }
    }
    double worst = 0;
    for (std::size_t i = 0; i < n; ++i) {
      const double err = std::abs(sum_applied[i] + ef.residual()[i] - sum_in[i]);
      worst = std::max(worst, err / (1 + std::abs(sum_in[i]) + std::abs(ef.residual()[i])));
    }
    EXPECT_LT(worst, 1e-5) << name;
    if (!c->unbiased()) {
      // Biased methods drop something each step, so the residual is doing work.
      EXPECT_GT(*std::max_element(ef.residual().begin(), ef.residual().end()), 0.0f) << name;
    }
  }
}

TEST(ErrorFeedback, ManualStepsDecayResetAndOffsets) {
  ErrorFeedback ef(4, 0.5f);
  std::vector<float> g = {1, 2, 3, 4};
  ef.compensate(g);  // residual 0
  EXPECT_EQ(g, (std::vector<float>{1, 2, 3, 4}));
  ef.absorb(g, std::vector<float>{0, 2, 0, 4});
  EXPECT_EQ(std::vector<float>(ef.residual().begin(), ef.residual().end()),
            (std::vector<float>{1, 0, 3, 0}));
  std::vector<float> comp(2);
  ef.compensate(std::vector<float>{10, 10}, comp, 2);  // elements 2..3: 10 + 0.5 * {3, 0}
  EXPECT_EQ(comp, (std::vector<float>{11.5f, 10}));
  EXPECT_EQ(testing::code_of([&] { ef.compensate(g, 1); }), ErrorCode::InvalidArgument);
  ef.reset();
  EXPECT_EQ(std::vector<float>(ef.residual().begin(), ef.residual().end()),
            (std::vector<float>(4, 0.0f)));
  EXPECT_EQ(testing::code_of([] { ErrorFeedback bad(3, 1.5f); }), ErrorCode::InvalidArgument);
}

TEST(ErrorFeedback, SaveAndRestore) {
  ErrorFeedback ef(5, 0.9f);
  ef.absorb(std::vector<float>{1, 2, 3, 4, 5}, std::vector<float>{0, 0, 1, 0, 0});
  const auto image = ef.save();
  ErrorFeedback back(5);
  back.restore(image);
  EXPECT_EQ(back.decay(), 0.9f);
  EXPECT_TRUE(std::equal(back.residual().begin(), back.residual().end(), ef.residual().begin()));
  ErrorFeedback other(6);
  EXPECT_EQ(testing::code_of([&] { other.restore(image); }), ErrorCode::Mismatch);
  EXPECT_EQ(testing::code_of([&] { back.restore(std::span(image).first(image.size() - 1)); }),
            ErrorCode::InvalidArgument);
  auto broken = image;
  broken[0] = std::byte{0};
  EXPECT_EQ(testing::code_of([&] { back.restore(broken); }), ErrorCode::InvalidArgument);
}

}  // namespace
}  // namespace frugal::compression
