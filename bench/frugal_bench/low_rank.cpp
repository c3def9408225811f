#include "low_rank.hpp"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace frugal::bench {

MatrixShape matrix_shape(std::size_t count) noexcept {
  std::size_t cols = 1;
  for (std::size_t d = 1; d * d <= count; ++d) {
    if (count % d == 0) cols = d;
  }
  return {count == 0 ? 0 : count / cols, count == 0 ? 0 : cols};
}

namespace {

// Element i of vector t (of length n): an integer in [-2, 2] from a hash of (i, t, salt), plus
// 4r on the "diagonal" i == t, so that the first r elements of the r vectors form a strictly
// diagonally dominant (hence invertible) r x r matrix: off-diagonal row sums are at most
// 2(r - 1) < 4r - 2.
std::vector<float> factor(std::size_t n, int t, int r, std::uint32_t salt) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t x = static_cast<std::uint32_t>(i) * 0x9E3779B9u ^
                      (static_cast<std::uint32_t>(t) * 0x85EBCA6Bu + salt);
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    v[i] = static_cast<float>(static_cast<int>(x % 5u) - 2);
    if (i == static_cast<std::size_t>(t)) v[i] += static_cast<float>(4 * r);
  }
  return v;
}

}  // namespace

void fill_low_rank(std::span<float> data, MatrixShape shape, int r, int rank) noexcept {
  std::fill(data.begin(), data.end(), 0.0f);
  for (int t = 0; t < r; ++t) {
    const std::vector<float> u = factor(shape.rows, t, r, 0x27D4EB2Fu);
    const std::vector<float> v = factor(shape.cols, t, r, 0x165667B1u);
    const auto a = static_cast<float>(1 + (rank + t) % 3);
    for (std::size_t i = 0; i < shape.rows; ++i) {
      const float au = a * u[i];
      float* row = data.data() + i * shape.cols;
      for (std::size_t j = 0; j < shape.cols; ++j) row[j] += au * v[j];
    }
  }
}

}  // namespace frugal::bench
