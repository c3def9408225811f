#include "powersgd_kernels.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "frugal/compression/simd.hpp"

namespace frugal::detail::powersgd {

namespace {

// Independent partial sums per column: enough for the compiler to keep two SSE (one AVX)
// registers of products in flight without reassociating anything itself.
constexpr std::size_t kLanes = 8;
// Columns of Q per pass over a row of M: a row is read once for up to this many dot products.
constexpr std::size_t kGroup = 4;
// Columns of M per block in multiply_mtp: the block of Q it updates (r x kBlock floats) stays in
// L1 while the rows of M stream past.
constexpr std::size_t kBlock = 512;

// Eight lanes in one value: GCC and Clang lower it to two SSE or one AVX register and keep the
// R accumulators in registers, which a float[R][8] array did not reliably get (measured: half
// the speed at r = 2).
using Lanes = float __attribute__((vector_size(kLanes * sizeof(float))));

template <std::size_t R>
void mq_group(const float* m, std::size_t rows, std::size_t cols, const float* q, float* p) {
  for (std::size_t i = 0; i < rows; ++i) {
    const float* row = m + i * cols;
    Lanes acc[R] = {};
    std::size_t j = 0;
    for (; j + kLanes <= cols; j += kLanes) {
      Lanes x;
      std::memcpy(&x, row + j, sizeof x);
      for (std::size_t c = 0; c < R; ++c) {
        Lanes y;
        std::memcpy(&y, q + c * cols + j, sizeof y);
        acc[c] += x * y;
      }
    }
    for (std::size_t c = 0; c < R; ++c) {
      float tail = 0.0f;
      for (std::size_t t = j; t < cols; ++t) tail += row[t] * q[c * cols + t];
      // Lanes folded pairwise in a fixed order.
      const float s0 = acc[c][0] + acc[c][4], s1 = acc[c][1] + acc[c][5];
      const float s2 = acc[c][2] + acc[c][6], s3 = acc[c][3] + acc[c][7];
      p[c * rows + i] = ((s0 + s2) + (s1 + s3)) + tail;
    }
  }
}

template <std::size_t R>
void mtp_group(const float* m, std::size_t rows, std::size_t cols, const float* p, float* q) {
  for (std::size_t j0 = 0; j0 < cols; j0 += kBlock) {
    const std::size_t width = std::min(kBlock, cols - j0);
    for (std::size_t c = 0; c < R; ++c) std::fill_n(q + c * cols + j0, width, 0.0f);
    std::size_t i = 0;
    // Four rows per pass over the block: a quarter of the loads and stores of Q. The sums still
    // run in row order, (((q + a0) + a1) + a2) + a3, as one row at a time would.
    for (; i + 4 <= rows; i += 4) {
      const float* m0 = m + i * cols + j0;
      const float* m1 = m0 + cols;
      const float* m2 = m1 + cols;
      const float* m3 = m2 + cols;
      for (std::size_t c = 0; c < R; ++c) {
        const float p0 = p[c * rows + i], p1 = p[c * rows + i + 1];
        const float p2 = p[c * rows + i + 2], p3 = p[c * rows + i + 3];
        float* qc = q + c * cols + j0;
        for (std::size_t j = 0; j < width; ++j) {
          qc[j] = (((qc[j] + p0 * m0[j]) + p1 * m1[j]) + p2 * m2[j]) + p3 * m3[j];
        }
      }
    }
    for (; i < rows; ++i) {
      const float* mi = m + i * cols + j0;
      for (std::size_t c = 0; c < R; ++c) {
        const float pi = p[c * rows + i];
        float* qc = q + c * cols + j0;
        for (std::size_t j = 0; j < width; ++j) qc[j] += pi * mi[j];
      }
    }
  }
}

// Calls kernel<R> for the columns [c0, c0 + R) of P and Q, in groups of at most kGroup.
template <template <std::size_t> class Kernel, typename... Args>
void by_groups(std::size_t r, Args... args) {
  for (std::size_t c0 = 0; c0 < r; c0 += kGroup) {
    switch (std::min(kGroup, r - c0)) {
      case 1:
        Kernel<1>::run(c0, args...);
        break;
      case 2:
        Kernel<2>::run(c0, args...);
        break;
      case 3:
        Kernel<3>::run(c0, args...);
        break;
      default:
        Kernel<4>::run(c0, args...);
        break;
    }
  }
}

template <std::size_t R>
struct MqKernel {
  static void run(std::size_t c0, const float* m, std::size_t rows, std::size_t cols,
                  const float* q, float* p) {
    mq_group<R>(m, rows, cols, q + c0 * cols, p + c0 * rows);
  }
};

template <std::size_t R>
struct MtpKernel {
  static void run(std::size_t c0, const float* m, std::size_t rows, std::size_t cols,
                  const float* p, float* q) {
    mtp_group<R>(m, rows, cols, p + c0 * rows, q + c0 * cols);
  }
};

// The products with AVX2 (8 lanes per register, 16 registers) and without: the same lane
// arithmetic (no FMA: target avx2 alone does not contract), so both give the same bits; `flatten`
// compiles everything they call for their target.
void mq_baseline(const float* m, std::size_t rows, std::size_t cols, const float* q, std::size_t r,
                 float* p) {
  by_groups<MqKernel>(r, m, rows, cols, q, p);
}
void mtp_baseline(const float* m, std::size_t rows, std::size_t cols, const float* p, std::size_t r,
                  float* q) {
  by_groups<MtpKernel>(r, m, rows, cols, p, q);
}
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FRUGAL_POWERSGD_AVX2 1
[[gnu::target("avx2"), gnu::flatten]] void mq_avx2(const float* m, std::size_t rows,
                                                   std::size_t cols, const float* q, std::size_t r,
                                                   float* p) {
  by_groups<MqKernel>(r, m, rows, cols, q, p);
}
[[gnu::target("avx2"), gnu::flatten]] void mtp_avx2(const float* m, std::size_t rows,
                                                    std::size_t cols, const float* p, std::size_t r,
                                                    float* q) {
  by_groups<MtpKernel>(r, m, rows, cols, p, q);
}
#endif

bool use_avx2() noexcept {
#ifdef FRUGAL_POWERSGD_AVX2
  return compression::simd_level() != compression::SimdLevel::Scalar;
#else
  return false;
#endif
}

}  // namespace

void multiply_mq(std::span<const float> m, std::size_t rows, std::size_t cols,
                 std::span<const float> q, std::size_t r, std::span<float> p) noexcept {
#ifdef FRUGAL_POWERSGD_AVX2
  if (use_avx2()) return mq_avx2(m.data(), rows, cols, q.data(), r, p.data());
#endif
  mq_baseline(m.data(), rows, cols, q.data(), r, p.data());
}

void multiply_mtp(std::span<const float> m, std::size_t rows, std::size_t cols,
                  std::span<const float> p, std::size_t r, std::span<float> q) noexcept {
#ifdef FRUGAL_POWERSGD_AVX2
  if (use_avx2()) return mtp_avx2(m.data(), rows, cols, p.data(), r, q.data());
#endif
  mtp_baseline(m.data(), rows, cols, p.data(), r, q.data());
}

void orthonormalise(std::span<float> p, std::size_t rows, std::size_t r) noexcept {
  for (std::size_t c = 0; c < r; ++c) {
    float* v = p.data() + c * rows;
    // Modified Gram-Schmidt: each earlier column's projection is taken from what is left of v.
    for (std::size_t k = 0; k < c; ++k) {
      const float* u = p.data() + k * rows;
      double dot = 0.0;
      for (std::size_t i = 0; i < rows; ++i) dot += double{v[i]} * double{u[i]};
      const auto d = static_cast<float>(dot);
      for (std::size_t i = 0; i < rows; ++i) v[i] -= d * u[i];
    }
    double norm2 = 0.0;
    for (std::size_t i = 0; i < rows; ++i) norm2 += double{v[i]} * double{v[i]};
    const double norm = std::sqrt(norm2);
    // A column with nothing left (P of a zero gradient): zero rather than 0/0. Its Q column
    // comes out zero too, and is drawn again for the next step.
    const auto scale = norm > 0.0 ? static_cast<float>(1.0 / norm) : 0.0f;
    for (std::size_t i = 0; i < rows; ++i) v[i] *= scale;
  }
}

namespace {

// Element by element (no sum across lanes), so any vector width gives the same bits: ranks on
// CPUs with and without AVX2 still agree on the approximation.
inline void reconstruct_impl(std::span<float> m, std::size_t rows, std::size_t cols,
                             std::span<const float> p, std::span<const float> q, std::size_t r,
                             std::span<float> residual, float divisor) noexcept {
  const bool feedback = !residual.empty();
  for (std::size_t i = 0; i < rows; ++i) {
    float* mi = m.data() + i * cols;
    float* ri = feedback ? residual.data() + i * cols : nullptr;
    // Approximation row: the first column's term, then the others added in column order.
    float pc0 = p[i];
    float approx_buf[kBlock];
    for (std::size_t j0 = 0; j0 < cols; j0 += kBlock) {
      const std::size_t width = std::min(kBlock, cols - j0);
      const float* q0 = q.data() + j0;
      for (std::size_t j = 0; j < width; ++j) approx_buf[j] = pc0 * q0[j];
      for (std::size_t c = 1; c < r; ++c) {
        const float pc = p[c * rows + i];
        const float* qc = q.data() + c * cols + j0;
        for (std::size_t j = 0; j < width; ++j) approx_buf[j] += pc * qc[j];
      }
      if (feedback) {
        if (divisor == 1.0f) {
          for (std::size_t j = 0; j < width; ++j) ri[j0 + j] = mi[j0 + j] - approx_buf[j];
        } else {
          for (std::size_t j = 0; j < width; ++j) {
            ri[j0 + j] = mi[j0 + j] - approx_buf[j] / divisor;
          }
        }
      }
      std::copy_n(approx_buf, width, mi + j0);
    }
  }
}

inline void compensate_impl(std::span<float> m, std::span<const float> residual) noexcept {
  float* out = m.data();
  const float* in = residual.data();
  for (std::size_t i = 0; i < m.size(); ++i) out[i] += in[i];
}

void reconstruct_baseline(std::span<float> m, std::size_t rows, std::size_t cols,
                          std::span<const float> p, std::span<const float> q, std::size_t r,
                          std::span<float> residual, float divisor) noexcept {
  reconstruct_impl(m, rows, cols, p, q, r, residual, divisor);
}
void compensate_baseline(std::span<float> m, std::span<const float> residual) noexcept {
  compensate_impl(m, residual);
}
#ifdef FRUGAL_POWERSGD_AVX2
[[gnu::target("avx2"), gnu::flatten]] void reconstruct_avx2(
    std::span<float> m, std::size_t rows, std::size_t cols, std::span<const float> p,
    std::span<const float> q, std::size_t r, std::span<float> residual, float divisor) noexcept {
  reconstruct_impl(m, rows, cols, p, q, r, residual, divisor);
}
[[gnu::target("avx2"), gnu::flatten]] void compensate_avx2(
    std::span<float> m, std::span<const float> residual) noexcept {
  compensate_impl(m, residual);
}
#endif

}  // namespace

void reconstruct(std::span<float> m, std::size_t rows, std::size_t cols, std::span<const float> p,
                 std::span<const float> q, std::size_t r, std::span<float> residual,
                 float divisor) noexcept {
#ifdef FRUGAL_POWERSGD_AVX2
  if (use_avx2()) return reconstruct_avx2(m, rows, cols, p, q, r, residual, divisor);
#endif
  reconstruct_baseline(m, rows, cols, p, q, r, residual, divisor);
}

void compensate(std::span<float> m, std::span<const float> residual) noexcept {
#ifdef FRUGAL_POWERSGD_AVX2
  if (use_avx2()) return compensate_avx2(m, residual);
#endif
  compensate_baseline(m, residual);
}

}  // namespace frugal::detail::powersgd
