#include "stats.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace frugal::bench {

double median(std::span<const double> samples) {
  if (samples.empty()) throw std::invalid_argument("median of no samples");
  std::vector<double> sorted(samples.begin(), samples.end());
  std::sort(sorted.begin(), sorted.end());
  const std::size_t n = sorted.size();
  return n % 2 == 1 ? sorted[n / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

double percentile(std::span<const double> samples, double p) {
  if (samples.empty()) throw std::invalid_argument("percentile of no samples");
  if (!(p >= 0 && p <= 100)) throw std::invalid_argument("percentile outside [0, 100]");
  std::vector<double> sorted(samples.begin(), samples.end());
  std::sort(sorted.begin(), sorted.end());
  const double rank = std::ceil(p * static_cast<double>(sorted.size()) / 100);
  const std::size_t index = rank < 1 ? 0 : static_cast<std::size_t>(rank) - 1;
  return sorted[std::min(index, sorted.size() - 1)];
}

LatencySummary summarize(std::span<const double> samples_us) {
  return {median(samples_us), percentile(samples_us, 95)};
}

double algbw_gbps(std::size_t bytes, double time_us) noexcept {
  if (!(time_us > 0)) return 0;
  return static_cast<double>(bytes) / (time_us * 1e-6) / 1e9;
}

double busbw_gbps(double algbw_gbps, int ranks) noexcept {
  if (ranks <= 1) return 0;
  return algbw_gbps * 2.0 * (ranks - 1) / ranks;
}

double dense_wire_bytes(std::size_t bytes, int ranks) noexcept {
  if (ranks <= 1) return 0;
  return 2.0 * (ranks - 1) / ranks * static_cast<double>(bytes);
}

double compression_ratio(std::size_t bytes, int ranks, double wire_bytes_per_rank) noexcept {
  if (!(wire_bytes_per_rank > 0)) return 0;
  return dense_wire_bytes(bytes, ranks) / wire_bytes_per_rank;
}

}  // namespace frugal::bench
