#pragma once

// What frugal-bench's PowerSGD rows reduce: the buffer viewed as one matrix, and the input of
// their --ranks-check, whose sum over ranks is a matrix of rank exactly R. Pure.

#include <cstddef>
#include <span>

namespace frugal::bench {

struct MatrixShape {
  std::size_t rows = 0;
  std::size_t cols = 0;
};

// rows x cols = count, cols the largest divisor of count not above its square root (the
// squarest matrix: PowerSGD's factors are smallest for it). A prime count gives count x 1, which
// PowerSGD reduces exactly.
MatrixShape matrix_shape(std::size_t count) noexcept;

// Rank `rank`'s matrix (row-major) sum_t a(rank, t) u_t v_t^T over t < r, the vectors u_t, v_t
// the same on every rank and a(rank, t) in {1, 2, 3}: the sum over any number of ranks has rank
// exactly r when rows and cols are both >= r (the first r entries of the u's, and of the v's,
// form a strictly diagonally dominant matrix), and all its entries are integers (exact in float32
// while below 2^24: r up to 16 at 64 ranks). data.size() ==
// shape.rows * shape.cols; r >= 1.
void fill_low_rank(std::span<float> data, MatrixShape shape, int r, int rank) noexcept;

}  // namespace frugal::bench
