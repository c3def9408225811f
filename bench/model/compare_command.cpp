// frugal-model compare: each measured frugal-bench row beside its prediction.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "calibration.hpp"
#include "cli.hpp"
#include "commands.hpp"
#include "cost_model.hpp"
#include "measured_rows.hpp"
#include "options.hpp"
#include "transport_fit.hpp"

namespace frugal::model {

using bench::UsageError;

namespace {

constexpr double kGoal = 0.25;  // |predicted / measured - 1| within which a row counts as met

}  // namespace

int compare_command(int argc, char** argv) {
  const Args args = parse_args(argc, argv, "compare",
                               {"--calibration", "--rate", "--latency", "--cores", "--efficiency"},
                               {"--fit-efficiency", "--markdown"});
  if (args.positional.empty()) throw UsageError("compare needs frugal-bench JSON files");
  if (args.has("--efficiency") && args.has("--fit-efficiency")) {
    throw UsageError("--efficiency and --fit-efficiency exclude each other");
  }
  const Calibration c = load_calibration(args.need("--calibration", "compare"));
  Link link;
  link.bytes_per_second = parse_rate(args.need("--rate", "compare"));
  link.latency_seconds = parse_time(args.get("--latency", "0"));
  const std::string machine_cores =
      std::to_string(std::max(1u, std::thread::hardware_concurrency()));
  const int cores = static_cast<int>(parse_count(args.get("--cores", machine_cores), "--cores", 0));
  std::vector<MeasuredRow> rows;
  for (const std::string& path : args.positional) {
    const std::vector<MeasuredRow> more = load_rows(path);
    rows.insert(rows.end(), more.begin(), more.end());
  }
  std::optional<std::size_t> fitted;  // the row the efficiency was taken from
  if (args.has("--fit-efficiency")) {
    link.efficiency = fit_efficiency(c, rows, link, cores);
    fitted = efficiency_row(rows);
  } else if (args.has("--efficiency")) {
    link.efficiency = parse_number(args.get("--efficiency"), "--efficiency");
    if (!(link.efficiency > 0 && link.efficiency <= 1)) {
      throw UsageError("--efficiency: must be in (0, 1]");
    }
  }
  const bool md = args.has("--markdown");
  std::printf("%sfrugal-model compare: rate %s, latency %s, %d cores, link efficiency %.3f%s\n",
              md ? "" : "# ", args.get("--rate").c_str(), args.get("--latency", "0").c_str(), cores,
              link.efficiency, fitted ? " (fitted: the row marked fit)" : "");
  if (md) {
    std::printf(
        "\n| P | bytes | method | measured ms | min..max ms | predicted ms | ratio | bytes/rank "
        "measured | model | compute ms | wire ms | latency ms | |\n"
        "|--:|--:|:--|--:|--:|--:|--:|--:|--:|--:|--:|--:|:--|\n");
  } else {
    std::printf("%3s %11s  %-28s %12s %19s %12s %6s %12s %12s  %s\n", "P", "bytes", "method",
                "measured_ms", "min..max_ms", "predicted_ms", "ratio", "wire_meas", "wire_model",
                "");
  }
  int met = 0;
  int in_range = 0;  // predictions between the fastest and the slowest measured iteration
  int counted = 0;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const MeasuredRow& r = rows[i];
    Scenario s;
    s.elements = r.bytes / sizeof(float);
    s.ranks = r.ranks;
    s.cores = cores;
    s.link = link;
    const Prediction p = predict(r.method, frugal::compression::CompressionConfig{}, s, c);
    const double ratio = p.seconds / r.median_seconds;
    const bool ok = std::fabs(ratio - 1) <= kGoal;
    const bool fit = fitted && *fitted == i;
    const bool ranged = r.min_seconds && r.max_seconds;
    const bool inside = ranged && p.seconds >= *r.min_seconds * (1 - 1e-9) &&
                        p.seconds <= *r.max_seconds * (1 + 1e-9);
    if (!fit) {
      ++counted;
      met += ok ? 1 : 0;
      in_range += inside ? 1 : 0;
    }
    char range[48] = "-";
    if (ranged) {
      std::snprintf(range, sizeof range, "%.2f..%.2f", *r.min_seconds * 1e3, *r.max_seconds * 1e3);
    }
    const std::string label = method_label(r.method, {}, s.elements, r.ranks);
    std::string verdict = fit ? "fit" : (ok ? "ok" : (inside ? "MISS, in range" : "MISS"));
    // The rows do not record the compression parameters: bytes far from the model's mean the
    // run used others than frugal-bench's defaults, and the prediction is for the wrong method.
    if (r.wire_bytes_per_rank && std::fabs(p.wire_bytes / *r.wire_bytes_per_rank - 1) > 0.05) {
      verdict += ", bytes differ";
    }
    const std::string measured_wire =
        r.wire_bytes_per_rank ? megabytes(*r.wire_bytes_per_rank) : std::string("-");
    if (md) {
      std::printf(
          "| %d | %zu | %s | %.2f | %s | %.2f | %.2f | %s | %s | %.2f | %.2f | %.2f | %s |\n",
          r.ranks, r.bytes, label.c_str(), r.median_seconds * 1e3, range, p.seconds * 1e3, ratio,
          measured_wire.c_str(), megabytes(p.wire_bytes).c_str(), p.compute_seconds * 1e3,
          p.wire_seconds * 1e3, p.latency_seconds * 1e3, verdict.c_str());
    } else {
      std::printf("%3d %11zu  %-28s %12.2f %19s %12.2f %6.2f %12s %12s  %s\n", r.ranks, r.bytes,
                  label.c_str(), r.median_seconds * 1e3, range, p.seconds * 1e3, ratio,
                  measured_wire.c_str(), megabytes(p.wire_bytes).c_str(), verdict.c_str());
    }
  }
  std::printf(
      "%s%d of %d predicted rows within 25%% of the measurement; %d of %d between the fastest and "
      "the slowest measured iteration\n",
      md ? "\n" : "# ", met, counted, in_range, counted);
  return 0;
}

}  // namespace frugal::model
