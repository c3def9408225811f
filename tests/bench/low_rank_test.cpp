#include "low_rank.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <vector>

namespace frugal::bench {
namespace {

TEST(MatrixShape, SquarestFactorisation) {
  for (const std::size_t n : {std::size_t{1}, std::size_t{2}, std::size_t{12}, std::size_t{16384},
                              std::size_t{25600000}, std::size_t{1000003}, std::size_t{250001}}) {
    const MatrixShape s = matrix_shape(n);
    EXPECT_EQ(s.rows * s.cols, n) << n;
    EXPECT_LE(s.cols, s.rows) << n;
    // No divisor of n lies between cols and sqrt(n).
    for (std::size_t d = s.cols + 1; d * d <= n; ++d) EXPECT_NE(n % d, 0u) << n << " " << d;
  }
  EXPECT_EQ(matrix_shape(16384).cols, 128u);
  EXPECT_EQ(matrix_shape(12).cols, 3u);
  EXPECT_EQ(matrix_shape(1000003).cols, 1u);  // a prime: one column
  EXPECT_EQ(matrix_shape(0).rows, 0u);
}

// The rank of a rows x cols matrix by Gaussian elimination with partial pivoting, in double.
int rank_of(std::vector<double> m, std::size_t rows, std::size_t cols) {
  int rank = 0;
  std::size_t row = 0;
  for (std::size_t c = 0; c < cols && row < rows; ++c) {
    std::size_t pivot = row;
    for (std::size_t i = row; i < rows; ++i)
      if (std::abs(m[i * cols + c]) > std::abs(m[pivot * cols + c])) pivot = i;
    if (std::abs(m[pivot * cols + c]) < 1e-6) continue;
    for (std::size_t j = 0; j < cols; ++j) std::swap(m[row * cols + j], m[pivot * cols + j]);
    for (std::size_t i = row + 1; i < rows; ++i) {
      const double f = m[i * cols + c] / m[row * cols + c];
      for (std::size_t j = c; j < cols; ++j) m[i * cols + j] -= f * m[row * cols + j];
    }
    ++row;
    ++rank;
  }
  return rank;
}

// The sum over ranks has rank exactly r, the ranks' inputs differ, and all are integers.
TEST(LowRank, SumHasRankExactlyR) {
  const MatrixShape shape{24, 16};
  for (const int r : {1, 2, 4, 7}) {
    for (const int ranks : {1, 2, 3, 8}) {
      std::vector<double> sum(shape.rows * shape.cols, 0.0);
      std::vector<float> mine(sum.size());
      std::vector<float> first(sum.size());
      for (int rank = 0; rank < ranks; ++rank) {
        fill_low_rank(mine, shape, r, rank);
        if (rank == 0) first = mine;
        for (std::size_t i = 0; i < sum.size(); ++i) {
          EXPECT_EQ(mine[i], std::round(mine[i]));
          sum[i] += mine[i];
        }
      }
      EXPECT_EQ(rank_of(sum, shape.rows, shape.cols), r) << "r " << r << ", " << ranks << " ranks";
      if (ranks > 1 && r > 1) {
        fill_low_rank(mine, shape, r, 1);
        EXPECT_NE(mine, first);
      }
    }
  }
}

}  // namespace
}  // namespace frugal::bench
