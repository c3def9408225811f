// PowerSGD's kernels against naive loops: the blocked and grouped loops must compute the same
// products for every rank r (groups of 4 and a remainder) and every shape (lane and block tails).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "frugal/compression/simd.hpp"
#include "powersgd_kernels.hpp"

namespace frugal::detail::powersgd {
namespace {

std::vector<float> random_floats(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(gen);
  return v;
}

struct KernelCase {
  std::size_t rows, cols, r;
};

class PowerSgdKernels : public ::testing::TestWithParam<KernelCase> {};

TEST_P(PowerSgdKernels, ProductsMatchNaiveLoops) {
  const auto [rows, cols, r] = GetParam();
  const auto m = random_floats(rows * cols, 1);
  const auto q = random_floats(r * cols, 2);
  const auto pin = random_floats(r * rows, 3);
  std::vector<float> p(r * rows, -1.0f), qt(r * cols, -1.0f);
  multiply_mq(m, rows, cols, q, r, p);
  multiply_mtp(m, rows, cols, pin, r, qt);
  for (std::size_t c = 0; c < r; ++c) {
    for (std::size_t i = 0; i < rows; ++i) {
      double want = 0, size = 0;
      for (std::size_t j = 0; j < cols; ++j) {
        want += double(m[i * cols + j]) * q[c * cols + j];
        size += std::abs(double(m[i * cols + j]) * q[c * cols + j]);
      }
      ASSERT_NEAR(p[c * rows + i], want, 1e-5 * (1 + size)) << "P row " << i << " col " << c;
    }
    for (std::size_t j = 0; j < cols; ++j) {
      double want = 0, size = 0;
      for (std::size_t i = 0; i < rows; ++i) {
        want += double(m[i * cols + j]) * pin[c * rows + i];
        size += std::abs(double(m[i * cols + j]) * pin[c * rows + i]);
      }
      ASSERT_NEAR(qt[c * cols + j], want, 1e-5 * (1 + size)) << "Q row " << j << " col " << c;
    }
  }
}

TEST_P(PowerSgdKernels, OrthonormaliseGivesOrthonormalColumnsSpanningTheInput) {
  const auto [rows, cols, r] = GetParam();
  if (r > rows) GTEST_SKIP() << "more columns than rows";
  const auto original = random_floats(r * rows, 4);
  std::vector<float> p = original;
  orthonormalise(p, rows, r);
  for (std::size_t a = 0; a < r; ++a) {
    for (std::size_t b = 0; b <= a; ++b) {
      double dot = 0;
      for (std::size_t i = 0; i < rows; ++i) dot += double(p[a * rows + i]) * p[b * rows + i];
      ASSERT_NEAR(dot, a == b ? 1.0 : 0.0, 1e-5) << "columns " << a << ", " << b;
    }
  }
  // Column c lies in the span of the first c + 1 input columns: its component outside them, after
  // removing the projections on the earlier outputs, is the normalised input column itself.
  for (std::size_t c = 0; c < r; ++c) {
    double along = 0, norm2 = 0;
    for (std::size_t i = 0; i < rows; ++i) {
      along += double(p[c * rows + i]) * original[c * rows + i];
      norm2 += double(original[c * rows + i]) * original[c * rows + i];
    }
    EXPECT_GT(along, 0.0) << "column " << c << " turned away from its input";
    EXPECT_LE(along, std::sqrt(norm2) * (1 + 1e-6));
  }
}

TEST_P(PowerSgdKernels, ReconstructWritesApproximationAndResidual) {
  const auto [rows, cols, r] = GetParam();
  const auto m0 = random_floats(rows * cols, 5);
  const auto p = random_floats(r * rows, 6);
  const auto q = random_floats(r * cols, 7);
  for (const float divisor : {1.0f, 3.0f}) {
    std::vector<float> m = m0, residual(rows * cols, 42.0f);
    reconstruct(m, rows, cols, p, q, r, residual, divisor);
    for (std::size_t i = 0; i < rows; ++i) {
      for (std::size_t j = 0; j < cols; ++j) {
        double a = 0;
        for (std::size_t c = 0; c < r; ++c) a += double(p[c * rows + i]) * q[c * cols + j];
        const std::size_t e = i * cols + j;
        ASSERT_NEAR(m[e], a, 1e-5 * (1 + std::abs(a)));
        ASSERT_NEAR(residual[e], m0[e] - a / divisor, 1e-5 * (1 + std::abs(a)));
      }
    }
  }
  // Without a residual only the approximation is written.
  std::vector<float> m = m0;
  reconstruct(m, rows, cols, p, q, r, {}, 1.0f);
  EXPECT_NE(m, m0);
}

// The AVX2 build of each kernel must give the baseline's bits: reconstruct's output is the
// result every rank must agree on, whatever its CPU.
TEST_P(PowerSgdKernels, EverySimdLevelGivesTheSameBits) {
  const auto [rows, cols, r] = GetParam();
  const auto m = random_floats(rows * cols, 8);
  const auto q = random_floats(r * cols, 9);
  const auto p = random_floats(r * rows, 10);
  auto run = [&] {
    std::vector<float> out_p(r * rows), out_q(r * cols), out_m = m, residual(rows * cols);
    multiply_mq(m, rows, cols, q, r, out_p);
    multiply_mtp(m, rows, cols, p, r, out_q);
    reconstruct(out_m, rows, cols, p, q, r, residual, 3.0f);
    compensate(out_m, residual);
    return std::vector<std::vector<float>>{out_p, out_q, out_m, residual};
  };
  const auto best = compression::best_simd_level();
  const auto fast = run();
  compression::set_simd_level(compression::SimdLevel::Scalar);
  const auto scalar = run();
  compression::set_simd_level(best);
  for (std::size_t k = 0; k < fast.size(); ++k) {
    ASSERT_EQ(std::memcmp(fast[k].data(), scalar[k].data(), fast[k].size() * sizeof(float)), 0)
        << "output " << k << " differs between " << enum_name(best) << " and scalar";
  }
}

TEST(PowerSgdKernelsZero, AZeroColumnStaysZero) {
  std::vector<float> p(3 * 8, 0.0f);
  for (std::size_t i = 0; i < 8; ++i) p[i] = float(i + 1);  // column 0; columns 1, 2 zero
  orthonormalise(p, 8, 3);
  for (std::size_t i = 8; i < 24; ++i) ASSERT_EQ(p[i], 0.0f) << i;
  double norm = 0;
  for (std::size_t i = 0; i < 8; ++i) norm += double(p[i]) * p[i];
  EXPECT_NEAR(norm, 1.0, 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Shapes, PowerSgdKernels,
                         ::testing::Values(KernelCase{1, 1, 1}, KernelCase{7, 3, 1},
                                           KernelCase{16, 9, 2}, KernelCase{33, 17, 3},
                                           KernelCase{64, 100, 4}, KernelCase{9, 1300, 5},
                                           KernelCase{40, 24, 9}, KernelCase{5, 520, 4}));

}  // namespace
}  // namespace frugal::detail::powersgd
