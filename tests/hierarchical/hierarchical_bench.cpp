// Hierarchical against flat compressed allreduce on real processes, for bench/cluster/run
// --exec --ranks-per-host K (UCX with the TCP-store bootstrap from FRUGAL_RANK,
// FRUGAL_WORLD_SIZE, FRUGAL_ADDR; hosts found from hostname and network namespace).
//
// Usage: hierarchical-bench [--count N] [--iters I] [--warmup W] [--methods onebit,topk]
// Prints one line per method and mode on rank 0: the median over iterations of the slowest
// rank's time, and the compressed step's wire bytes per rank.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/enum_names.hpp"
#include "frugal/ucx.hpp"

namespace {

using frugal::AllreduceOptions;
using frugal::Communicator;

// The slowest rank's time of one iteration (every rank's, allgathered).
double slowest(Communicator& comm, double mine) {
  std::vector<double> all(static_cast<std::size_t>(comm.size()));
  frugal::allgather(comm, std::as_bytes(std::span<const double>(&mine, 1)),
                    std::as_writable_bytes(std::span<double>(all)));
  return *std::max_element(all.begin(), all.end());
}

template <typename Step>
double median_ms(Communicator& comm, int warmup, int iters, Step&& step) {
  std::vector<double> times;
  for (int i = 0; i < warmup + iters; ++i) {
    frugal::barrier(comm);
    const auto t0 = std::chrono::steady_clock::now();
    step();
    const double mine =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const double worst = slowest(comm, mine);
    if (i >= warmup) times.push_back(worst);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t count = std::size_t{1} << 22;
  int iters = 10;
  int warmup = 2;
  std::string methods = "onebit,topk";
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--count") {
      count = std::strtoull(argv[i + 1], nullptr, 10);
    } else if (flag == "--iters") {
      iters = std::atoi(argv[i + 1]);
    } else if (flag == "--warmup") {
      warmup = std::atoi(argv[i + 1]);
    } else if (flag == "--methods") {
      methods = argv[i + 1];
    } else {
      std::fprintf(stderr, "hierarchical-bench: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (count == 0 || iters < 1 || warmup < 0) {
    std::fprintf(stderr, "hierarchical-bench: --count and --iters must be positive\n");
    return 2;
  }
  try {
    auto comm = frugal::make_ucx_communicator_from_env();
    frugal::Hierarchy hierarchy(*comm);
    const frugal::HostTopology& t = hierarchy.topology();
    const bool root = comm->rank() == 0;
    if (root) {
      std::printf("# %d ranks: %d hosts x %d ranks, %zu floats (%.1f MB)\n", comm->size(),
                  t.host_count(), t.ranks_on_host(), count, static_cast<double>(count) * 4 / 1e6);
      std::printf("%-8s %-13s %10s %22s\n", "method", "mode", "median_ms", "wire_bytes_per_rank");
    }
    std::vector<float> input(count);
    for (std::size_t i = 0; i < count; ++i) {
      input[i] =
          static_cast<float>((i * 2654435761u + static_cast<std::size_t>(comm->rank())) % 1000) /
              500.0f -
          1.0f;
    }
    std::vector<float> data(count);
    std::size_t start = 0;
    while (start <= methods.size()) {
      const std::size_t end = std::min(methods.find(',', start), methods.size());
      const std::string name = methods.substr(start, end - start);
      start = end + 1;
      const auto method = frugal::parse_enum<frugal::compression::Method>(name);
      if (!method) {
        std::fprintf(stderr, "hierarchical-bench: unknown method %s\n", name.c_str());
        return 2;
      }
      AllreduceOptions options;
      options.compression.method = *method;
      frugal::AllreduceStats stats;
      options.stats = &stats;

      frugal::AllreduceState flat_state;
      AllreduceOptions flat = options;
      flat.state = &flat_state;
      const double flat_ms = median_ms(*comm, warmup, iters, [&] {
        std::copy(input.begin(), input.end(), data.begin());
        frugal::allreduce(*comm, std::span<float>(data), flat);
      });
      const std::size_t flat_bytes = stats.wire_bytes_sent;

      frugal::HierarchicalState state;
      const double hier_ms = median_ms(*comm, warmup, iters, [&] {
        std::copy(input.begin(), input.end(), data.begin());
        frugal::hierarchical_allreduce(hierarchy, std::span<float>(data), options, &state);
      });
      if (root) {
        std::printf("%-8s %-13s %10.2f %22zu\n", name.c_str(), "flat", flat_ms, flat_bytes);
        std::printf("%-8s %-13s %10.2f %22zu\n", name.c_str(), "hierarchical", hier_ms,
                    stats.wire_bytes_sent);
        std::printf("# %s: flat time / hierarchical time = %.2f\n", name.c_str(),
                    flat_ms / hier_ms);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "hierarchical-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
