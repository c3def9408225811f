// frugal-model project: predicted times at cluster sizes this machine cannot run.

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "calibration.hpp"
#include "cli.hpp"
#include "commands.hpp"
#include "cost_model.hpp"
#include "options.hpp"

namespace frugal::model {

using bench::UsageError;

int project_command(int argc, char** argv) {
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
    // frugal-bench's other rows: the model has no form for them.
    for (const frugal::bench::Method& m : methods) {
      if (m.is_powersgd() || m.hierarchical || m.gtopk || m.reduce_scatter || m.shard_allgather) {
        throw UsageError("--methods: the model has no form for " +
                         std::string(frugal::bench::method_field(m)) + ":" +
                         frugal::bench::algorithm_field(m));
      }
    }
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

}  // namespace frugal::model
