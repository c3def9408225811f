#include "transport_fit.hpp"

#include <algorithm>
#include <string>
#include <vector>

#include "frugal/error.hpp"

namespace frugal::model {

namespace {

// The P = 2 dense ring rows, smallest buffer first.
std::vector<MeasuredRow> ring_rows(std::span<const MeasuredRow> rows, const char* parameter) {
  std::vector<MeasuredRow> ring;
  for (const MeasuredRow& r : rows) {
    if (r.ranks == 2 && r.method == bench::Method::dense(AllreduceAlgorithm::Ring)) {
      ring.push_back(r);
    }
  }
  require(!ring.empty(), parameter, "needs frugal-bench rows of the dense ring at P = 2");
  std::sort(ring.begin(), ring.end(),
            [](const MeasuredRow& a, const MeasuredRow& b) { return a.bytes < b.bytes; });
  return ring;
}

// The row's prediction with `calibration`'s kernels, the given transport constants and link.
Prediction components(Calibration calibration, const MeasuredRow& row, const Link& link, int cores,
                      double message_seconds, double stack) {
  calibration.message_seconds = message_seconds;
  calibration.stack_seconds_per_byte = stack;
  Scenario s;
  s.elements = row.bytes / sizeof(float);
  s.ranks = row.ranks;
  s.cores = cores;
  s.link = link;
  return predict(row.method, compression::CompressionConfig{}, s, calibration);
}

}  // namespace

void fit_transport(Calibration& calibration, std::span<const MeasuredRow> rows) {
  const std::vector<MeasuredRow> ring = ring_rows(rows, "transport");
  require(ring.front().bytes < ring.back().bytes, "transport",
          "needs the dense ring at P = 2 at two sizes at least (a small and a large one)");
  Link unlimited;
  unlimited.bytes_per_second = 1e15;  // the link does not limit: only the stack and latency
  const MeasuredRow& small = ring.front();
  const Prediction p = components(calibration, small, unlimited, 0, 0, 0);
  calibration.message_seconds =
      std::max(0.0, (small.median_seconds - p.compute_seconds) / std::max(1, p.rounds));
  const MeasuredRow& large = ring.back();
  const Prediction q = components(calibration, large, unlimited, 0, calibration.message_seconds, 0);
  calibration.stack_seconds_per_byte = std::max(
      0.0, (large.median_seconds - q.compute_seconds - q.latency_seconds) / (2 * q.wire_bytes));
}

std::size_t efficiency_row(std::span<const MeasuredRow> rows) {
  const MeasuredRow largest = ring_rows(rows, "efficiency").back();
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i].ranks == 2 && rows[i].method == largest.method && rows[i].bytes == largest.bytes) {
      return i;
    }
  }
  return 0;  // unreachable: ring_rows found it in `rows`
}

double fit_efficiency(const Calibration& calibration, std::span<const MeasuredRow> rows,
                      const Link& link, int cores) {
  const MeasuredRow& large = rows[efficiency_row(rows)];
  Link ideal = link;
  ideal.efficiency = 1.0;
  const Prediction p = components(calibration, large, ideal, cores, calibration.message_seconds,
                                  calibration.stack_seconds_per_byte);
  const double wire = large.median_seconds - p.compute_seconds - p.latency_seconds;
  if (wire <= 0) return 1.0;
  // At P = 2 every ring round uses one connection both ways: wire_bytes cross it each way.
  const double ideal_wire = p.wire_bytes / (link.bytes_per_second * link.payload_share);
  return std::clamp(ideal_wire / wire, 1e-3, 1.0);
}

}  // namespace frugal::model
