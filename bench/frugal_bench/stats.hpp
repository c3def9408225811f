#pragma once

// Latency statistics and bandwidth formulas of frugal-bench. Pure functions.

#include <cstddef>
#include <span>

namespace frugal::bench {

struct LatencySummary {
  double median_us = 0;
  double p95_us = 0;
};

// Median: the middle sample, or the mean of the two middle ones for an even count.
// Throws std::invalid_argument when `samples` is empty.
double median(std::span<const double> samples);

// Nearest-rank percentile: the ceil(p/100 * n)-th smallest sample (the smallest for p = 0).
// Throws std::invalid_argument when `samples` is empty or p is outside [0, 100].
double percentile(std::span<const double> samples, double p);

// Median and 95th percentile of one rank's iteration times.
LatencySummary summarize(std::span<const double> samples_us);

// Algorithm bandwidth in GB/s (1 GB = 1e9 bytes): bytes / time. 0 when time_us <= 0.
double algbw_gbps(std::size_t bytes, double time_us) noexcept;

// nccl-tests' bus bandwidth of an allreduce: algbw * 2(P-1)/P (0 for P <= 1).
double busbw_gbps(double algbw_gbps, int ranks) noexcept;

// Bytes each rank sends in a dense ring allreduce of `bytes`: 2(P-1)/P * bytes (0 for P <= 1).
double dense_wire_bytes(std::size_t bytes, int ranks) noexcept;

// Compression ratio: dense_wire_bytes / the bytes a rank actually sent; 0 when nothing was sent.
double compression_ratio(std::size_t bytes, int ranks, double wire_bytes_per_rank) noexcept;

}  // namespace frugal::bench
