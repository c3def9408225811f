// PowerSGD's matrix kernels: the products with the thin factors P (rows x r) and Q (cols x r),
// the orthonormalisation of P and the reconstruction with error feedback.
//
// Why hand-written loops and not a BLAS: with r of 1 to 4 each product reads M once and does
// 2r flops per element it reads, so it is bound by memory bandwidth, not arithmetic, and a plain
// loop that streams M once is as fast as sgemm could be. bench/kernels/powersgd_bench.cpp puts
// every kernel next to a memcpy of M (docs/powersgd.md has the figures). Hand-written loops also
// fix the order of every sum, so every rank computes the same bits from the same inputs without
// depending on a BLAS build's threading or blocking.
//
// Factors are stored column by column: P as r columns of `rows` floats (p[c * rows + i]) and Q
// as r columns of `cols` floats (q[c * cols + j]), so that Gram-Schmidt and the allreduce see
// contiguous columns.
#pragma once

#include <cstddef>
#include <span>

namespace frugal::detail::powersgd {

// p[c * rows + i] = sum_j m[i * cols + j] * q[c * cols + j] for c < r.
void multiply_mq(std::span<const float> m, std::size_t rows, std::size_t cols,
                 std::span<const float> q, std::size_t r, std::span<float> p) noexcept;

// q[c * cols + j] = sum_i p[c * rows + i] * m[i * cols + j] for c < r (sums in row order).
void multiply_mtp(std::span<const float> m, std::size_t rows, std::size_t cols,
                  std::span<const float> p, std::size_t r, std::span<float> q) noexcept;

// Modified Gram-Schmidt on P's r columns, dot products and norms in double: afterwards the
// columns are orthonormal, except that a column with nothing left (norm 0) is set to zero.
void orthonormalise(std::span<float> p, std::size_t rows, std::size_t r) noexcept;

// For every element: a = sum_c p[c * rows + i] * q[c * cols + j] (in c order); when `residual`
// is not empty, residual = m - a / divisor (divisor 1 under Average, the number of ranks under
// Sum); then m = a.
void reconstruct(std::span<float> m, std::size_t rows, std::size_t cols, std::span<const float> p,
                 std::span<const float> q, std::size_t r, std::span<float> residual,
                 float divisor) noexcept;

// m[i] += residual[i].
void compensate(std::span<float> m, std::span<const float> residual) noexcept;

}  // namespace frugal::detail::powersgd
