#include "stats.hpp"

#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

namespace frugal::bench {
namespace {

TEST(Stats, MedianOddEvenUnsorted) {
  EXPECT_DOUBLE_EQ(median(std::vector<double>{7}), 7);
  EXPECT_DOUBLE_EQ(median(std::vector<double>{3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(median(std::vector<double>{4, 1, 3, 2}), 2.5);
  EXPECT_THROW(median(std::vector<double>{}), std::invalid_argument);
}

TEST(Stats, PercentileNearestRank) {
  std::vector<double> hundred;
  for (int i = 100; i >= 1; --i) hundred.push_back(i);
  EXPECT_DOUBLE_EQ(percentile(hundred, 95), 95);
  EXPECT_DOUBLE_EQ(percentile(hundred, 50), 50);
  EXPECT_DOUBLE_EQ(percentile(hundred, 100), 100);
  EXPECT_DOUBLE_EQ(percentile(hundred, 0), 1);
  std::vector<double> twenty;
  for (int i = 1; i <= 20; ++i) twenty.push_back(i);
  EXPECT_DOUBLE_EQ(percentile(twenty, 95), 19);  // ceil(0.95 * 20) = 19th smallest
  EXPECT_DOUBLE_EQ(percentile(std::vector<double>{5, 1, 9}, 95), 9);
  EXPECT_DOUBLE_EQ(percentile(std::vector<double>{4}, 95), 4);
  EXPECT_THROW(percentile(std::vector<double>{}, 95), std::invalid_argument);
  EXPECT_THROW(percentile(std::vector<double>{1}, 101), std::invalid_argument);
}

TEST(Stats, Summarize) {
  std::vector<double> samples;
  for (int i = 1; i <= 10; ++i) samples.push_back(i * 10.0);
  const LatencySummary s = summarize(samples);
  EXPECT_DOUBLE_EQ(s.median_us, 55);
  EXPECT_DOUBLE_EQ(s.p95_us, 100);  // ceil(9.5) = 10th
}

TEST(Stats, Bandwidth) {
  // 1e9 bytes in 1 s = 1 GB/s; 128 MiB in 100 ms.
  EXPECT_DOUBLE_EQ(algbw_gbps(1'000'000'000, 1e6), 1.0);
  EXPECT_NEAR(algbw_gbps(128u << 20, 100'000), 1.34217728, 1e-12);
  EXPECT_DOUBLE_EQ(algbw_gbps(4096, 0), 0);
  // busbw = algbw * 2(P-1)/P
  EXPECT_DOUBLE_EQ(busbw_gbps(2.0, 2), 2.0);
  EXPECT_DOUBLE_EQ(busbw_gbps(2.0, 4), 3.0);
  EXPECT_DOUBLE_EQ(busbw_gbps(3.0, 3), 4.0);
  EXPECT_DOUBLE_EQ(busbw_gbps(5.0, 1), 0);
}

TEST(Stats, WireBytesAndCompressionRatio) {
  // A dense ring sends 2(P-1)/P of the buffer per rank: all of it at P = 2, 1.5x at P = 4.
  EXPECT_DOUBLE_EQ(dense_wire_bytes(1 << 20, 2), 1 << 20);
  EXPECT_DOUBLE_EQ(dense_wire_bytes(1 << 20, 4), 1.5 * (1 << 20));
  EXPECT_DOUBLE_EQ(dense_wire_bytes(1 << 20, 1), 0);
  // 1-bit two-phase at P = 4 sends 2(P-1)/P of a 32x smaller buffer: ratio 32.
  EXPECT_DOUBLE_EQ(compression_ratio(1 << 20, 4, 1.5 * (1 << 20) / 32), 32);
  // Top-k sparse allgather at P = 4, density 1%, (index, value) = 8 bytes per element: each
  // rank sends its n/100 pairs to 3 peers, ratio n / (P k) = 25.
  const std::size_t n = 1000000;
  EXPECT_DOUBLE_EQ(compression_ratio(n * 4, 4, 3.0 * (n / 100) * 8), 25);
  EXPECT_DOUBLE_EQ(compression_ratio(4096, 2, 0), 0);
  // Effective bandwidth is uncompressed bytes / time, i.e. algbw: 100 MB in 50 ms = 2 GB/s.
  EXPECT_DOUBLE_EQ(algbw_gbps(100'000'000, 50'000), 2.0);
}

}  // namespace
}  // namespace frugal::bench
