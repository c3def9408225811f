// frugal-model: the cost model of frugal's allreduces. Calibrates kernel speeds once, predicts
// frugal-bench's rows beside their measurements, and projects to cluster sizes this machine
// cannot run. See `frugal-model --help` and docs/performance.md ("Cost model").

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "calibration.hpp"
#include "cli.hpp"
#include "cost_model.hpp"
#include "frugal/error.hpp"
#include "measure.hpp"
#include "measured_rows.hpp"
#include "options.hpp"
#include "transport_fit.hpp"

namespace {

using namespace frugal::model;
using frugal::bench::UsageError;

constexpr int kUsageExit = 2;
constexpr double kGoal = 0.25;  // |predicted / measured - 1| within which a row counts as met

const char* const kHelp = R"(Usage:
  frugal-model calibrate --transport ROWS.jsonl --out FILE [--elements SMALL,LARGE]
                         [--repeats R]
  frugal-model compare --calibration FILE --rate RATE [--latency TIME] [--cores C]
                       [--efficiency X | --fit-efficiency] [--markdown] ROWS.jsonl...
  frugal-model project --calibration FILE [--elements N] [--ranks LIST] [--rates LIST]
                       [--latency TIME] [--cores C] [--methods LIST] [--message-latency TIME]
                       [--no-stack-cost] [--markdown]
  frugal-model --help

The cost model of frugal's allreduces (docs/performance.md, "Cost model"). A call is a
sequence of message rounds plus computation: a round costs the per-message latency (plus a
message's CPU time per extra peer it talks to) plus the slowest of: the larger of the bytes a
rank sends and receives at the link's payload rate, the bytes one connection carries both ways
at the link's efficiency share of that rate, and the TCP stack's CPU time for those bytes;
computation is the calibrated kernels' time per element, stretched by max(1, P / C) when P
ranks share C cores. Payload bytes come from the compressors' own encoded_bytes.

calibrate   times every kernel on one core (encode with error feedback, decode, decode_add,
            decode_sum, input scan, dense reduction, fresh buffers, sparse merge) at the two
            --elements sizes (default 262144,25600000: in cache and in memory; the model
            interpolates in log n between them), the fastest of --repeats runs (default 9),
            and a 64-byte message over loopback TCP (the CPU time of one more message), and
            takes the transport's per-message latency and TCP CPU per byte from
            --transport: frugal-bench JSON rows of the dense ring at P = 2 on an unshaped link,
            a small and a large size (bench/model/validate makes them). Writes --out.
compare     reads frugal-bench --json files and prints each row's measured median beside the
            model's prediction for it at --rate, with the ratio predicted / measured and the
            model's bytes per rank beside the measured ones; rows within 25% are marked ok, and
            a miss that still lies between the fastest and the slowest measured iteration
            "MISS, in range" (the measurement's own spread).
            The rows do not record compression parameters: the model takes frugal-bench's
            defaults, and marks a row "bytes differ" when the measured bytes say otherwise.
            --fit-efficiency takes the link's efficiency (the share of the payload rate a
            connection busy both ways reaches under MPI) from the largest dense ring row at
            P = 2, marked "fit" (not a prediction); --efficiency sets it (default 1).
project     prints predicted times without measuring, for every --ranks (default
            16,32,64,128,256,512,1024) and --rates (default 1gbit,10gbit,25gbit,100gbit) at
            --elements (default 25600000), with each method's speedup over the faster of the
            dense ring and MPI_Allreduce, and the largest P at which it still pays.

Options:
  --rate RATE       link rate as tc writes it: 100mbit, 1gbit, 25gbit (decimal)
  --latency TIME    one-way delay added between two ranks: 0, 50us, 1ms (default 0)
  --cores C         cores the ranks share (default: compare, this machine's cores, where
                    frugal-bench ran all ranks; project 0 = one core per rank, no stretch)
  --methods LIST    project: dense algorithms and compressed methods as frugal-bench's
                    --algorithms and --methods take them, e.g. ring,mpi,onebit:two_phase
                    (default: every method and algorithm)
  --message-latency TIME  project: per-message software latency instead of the calibrated one
                    (which on 2 shared cores holds scheduling delays a cluster node does not have)
  --no-stack-cost   project: no CPU per byte in the transport (RDMA, or a TCP stack with cores
                    of its own) instead of the calibrated TCP stack cost
  --markdown        tables in Markdown (for bench/results/model/)

Exit status: 0, 1 on a runtime error, 2 on bad input (the message names the option or file).
)";

std::string megabytes(double bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g MB", bytes / 1e6);
  return text;
}

int calibrate(int argc, char** argv) {
  const Args args =
      parse_args(argc, argv, "calibrate", {"--transport", "--out", "--elements", "--repeats"}, {});
  const std::vector<std::string> sizes =
      split(args.get("--elements", "262144,25600000"), "--elements");
  if (sizes.size() != 2) throw UsageError("--elements: give two sizes, SMALL,LARGE");
  if (!args.positional.empty()) {
    throw UsageError("calibrate takes no argument '" + args.positional.front() + "'");
  }
  const std::string out_path = args.need("--out", "calibrate");
  const std::vector<MeasuredRow> rows = load_rows(args.need("--transport", "calibrate"));
  const auto small = static_cast<std::size_t>(parse_count(sizes[0], "--elements", 4096));
  const auto large = static_cast<std::size_t>(parse_count(sizes[1], "--elements", 4096));
  if (small > large) throw UsageError("--elements: SMALL above LARGE");
  const int repeats = static_cast<int>(parse_count(args.get("--repeats", "9"), "--repeats", 1));
  Calibration c = measure_kernels(small, large, repeats);
  fit_transport(c, rows);
  std::ofstream out(out_path);
  if (!out) throw UsageError("--out: cannot write '" + out_path + "'");
  write_calibration(out, c);
  out.close();
  if (!out) throw UsageError("--out: writing '" + out_path + "' failed");
  write_calibration(std::cout, c);
  return 0;
}

int compare(int argc, char** argv) {
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

int project(int argc, char** argv) {
  const Args args = parse_args(argc, argv, "project",
                               {"--calibration", "--elements", "--ranks", "--rates", "--latency",
                                "--cores", "--methods", "--message-latency"},
                               {"--markdown", "--no-stack-cost"});
  if (!args.positional.empty()) {
    throw UsageError("project takes no argument '" + args.positional.front() + "'");
  }
  Calibration c = load_calibration(args.need("--calibration", "project"));
  if (args.has("--message-latency")) c.message_seconds = parse_time(args.get("--message-latency"));
  if (args.has("--no-stack-cost")) c.stack_seconds_per_byte = 0;
  const auto elements =
      static_cast<std::size_t>(parse_count(args.get("--elements", "25600000"), "--elements", 1));
  std::vector<int> ranks;
  for (const std::string& p : split(args.get("--ranks", "16,32,64,128,256,512,1024"), "--ranks")) {
    ranks.push_back(static_cast<int>(parse_count(p, "--ranks", 1)));
  }
  const std::vector<std::string> rates =
      split(args.get("--rates", "1gbit,10gbit,25gbit,100gbit"), "--rates");
  const double latency = parse_time(args.get("--latency", "0"));
  const int cores = static_cast<int>(parse_count(args.get("--cores", "0"), "--cores", 0));
  std::vector<frugal::bench::Method> methods;
  if (args.has("--methods")) {
    std::vector<frugal::bench::Method> dense;
    std::string compressed;
    for (const std::string& m : split(args.get("--methods"), "--methods")) {
      if (m == "ring" || m == "rd" || m == "recursive_doubling" || m == "rabenseifner" ||
          m == "mpi") {
        const auto parsed = frugal::bench::parse_methods(m);
        dense.insert(dense.end(), parsed.begin(), parsed.end());
      } else {
        compressed += (compressed.empty() ? "" : ",") + m;
      }
    }
    methods =
        compressed.empty() ? dense : frugal::bench::combine_methods("dense," + compressed, dense);
  } else {
    methods = frugal::bench::combine_methods(
        "dense,fp16:two_phase,fp16:allgather,bf16:two_phase,onebit:two_phase,onebit:allgather,"
        "ternary:two_phase,ternary:allgather,qsgd:two_phase,qsgd:allgather,"
        "topk:sparse_allgather,topk:sparse_rd",
        frugal::bench::parse_methods("ring,rd,rabenseifner,mpi"));
  }
  const bool md = args.has("--markdown");
  const frugal::bench::Method ring = frugal::bench::Method::dense(frugal::AllreduceAlgorithm::Ring);
  const frugal::bench::Method mpi = frugal::bench::Method::mpi();
  std::printf(
      "%sfrugal-model project: %zu float32 elements (%s), added latency %s, "
      "per-message software latency %.3g us, TCP stack %.3g ns/byte, %s; times in ms, "
      "(x) = speedup over the faster of dense ring and MPI_Allreduce\n",
      md ? "" : "# ", elements, megabytes(4.0 * static_cast<double>(elements)).c_str(),
      args.get("--latency", "0").c_str(), c.message_seconds * 1e6, c.stack_seconds_per_byte * 1e9,
      cores == 0 ? "one core per rank" : (std::to_string(cores) + " cores shared").c_str());
  // pays_up_to[method][rate]: the largest P at which the method beats dense, or 0.
  std::vector<std::vector<int>> pays(methods.size(), std::vector<int>(rates.size(), 0));
  for (std::size_t ri = 0; ri < rates.size(); ++ri) {
    Link link;
    link.bytes_per_second = parse_rate(rates[ri]);
    link.latency_seconds = latency;
    std::printf("\n%s%s\n\n", md ? "### " : "## ", rates[ri].c_str());
    if (md) {
      std::printf("| method |");
      for (const int p : ranks) std::printf(" P = %d |", p);
      std::printf("\n|:--|");
      for (std::size_t i = 0; i < ranks.size(); ++i) std::printf("--:|");
      std::printf("\n");
    } else {
      std::printf("%-28s", "method");
      for (const int p : ranks) std::printf(" %16s", ("P=" + std::to_string(p)).c_str());
      std::printf("\n");
    }
    for (std::size_t mi = 0; mi < methods.size(); ++mi) {
      const auto& m = methods[mi];
      const std::string label = m.is_mpi() ? "mpi"
                                           : std::string(frugal::bench::method_field(m)) + "/" +
                                                 std::string(frugal::bench::algorithm_field(m));
      std::printf(md ? "| %s |" : "%-28s", label.c_str());
      for (const int p : ranks) {
        Scenario s;
        s.elements = elements;
        s.ranks = p;
        s.cores = cores;
        s.link = link;
        const double t = predict(m, {}, s, c).seconds;
        const double dense =
            std::min(predict(ring, {}, s, c).seconds, predict(mpi, {}, s, c).seconds);
        if (t < dense && p > pays[mi][ri]) pays[mi][ri] = p;
        char cell[48];
        std::snprintf(cell, sizeof cell, "%.1f (%.2fx)", t * 1e3, dense / t);
        std::printf(md ? " %s |" : " %16s", cell);
      }
      std::printf("\n");
    }
  }
  std::printf(
      "\n%sWhere each method stops paying: the largest P (of those above) at which it is "
      "faster than both dense ring and MPI_Allreduce (- : at none)\n\n",
      md ? "" : "# ");
  if (md) {
    std::printf("| method |");
    for (const std::string& r : rates) std::printf(" %s |", r.c_str());
    std::printf("\n|:--|");
    for (std::size_t i = 0; i < rates.size(); ++i) std::printf("--:|");
    std::printf("\n");
  }
  for (std::size_t mi = 0; mi < methods.size(); ++mi) {
    const auto& m = methods[mi];
    if (!m.is_compressed()) continue;
    const std::string label = std::string(frugal::bench::method_field(m)) + "/" +
                              std::string(frugal::bench::algorithm_field(m));
    std::printf(md ? "| %s |" : "%-28s", label.c_str());
    for (std::size_t ri = 0; ri < rates.size(); ++ri) {
      const std::string cell = pays[mi][ri] == 0              ? "-"
                               : pays[mi][ri] == ranks.back() ? ">= " + std::to_string(pays[mi][ri])
                                                              : std::to_string(pays[mi][ri]);
      std::printf(md ? " %s |" : " %10s", cell.c_str());
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string command = argc > 1 ? argv[1] : "";
    if (command == "--help" || command == "-h" || command == "help") {
      std::cout << kHelp;
      return 0;
    }
    if (command == "calibrate") return calibrate(argc, argv);
    if (command == "compare") return compare(argc, argv);
    if (command == "project") return project(argc, argv);
    throw UsageError(command.empty()
                         ? "needs a command: calibrate, compare or project"
                         : "unknown command '" + command + "' (calibrate, compare, project)");
  } catch (const UsageError& e) {
    std::cerr << "frugal-model: " << e.what() << "\n(frugal-model --help lists the options)\n";
    return kUsageExit;
  } catch (const frugal::Error& e) {
    std::cerr << "frugal-model: " << e.what() << "\n";
    return e.code() == frugal::ErrorCode::InvalidArgument ? kUsageExit : 1;
  } catch (const std::exception& e) {
    std::cerr << "frugal-model: error: " << e.what() << "\n";
    return 1;
  }
}
