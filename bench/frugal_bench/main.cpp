// frugal-bench: OSU-style benchmark of frugal's dense allreduce algorithms against Open MPI's
// MPI_Allreduce on the same buffers in the same run. See `frugal-bench --help`.

#include <mpi.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <tuple>

#include "frugal/error.hpp"
#include "frugal/mpi.hpp"
#ifdef FRUGAL_HAVE_UCX
#include "frugal/ucx.hpp"
#include "frugal/ucx_mpi.hpp"
#endif
#include "options.hpp"
#include "report.hpp"
#include "runner.hpp"

namespace {

using namespace frugal::bench;

constexpr int kRuntimeErrorExitCode = 1;

std::string mpi_library_version() {
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string version(text, static_cast<std::size_t>(length));
  return version.substr(0, version.find_first_of(",\n"));
}

std::string thread_level_name(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "unknown";
}

// `hierarchy`: the hosts of the hierarchical rows; null without such rows.
void print_header(const BenchOptions& o, int ranks, int thread_level,
                  std::chrono::milliseconds timeout, const frugal::Hierarchy* hierarchy) {
  std::printf("# frugal-bench: allreduce, P = %d ranks, %s, op %s, transport %s; %s (%s)\n", ranks,
              std::string(frugal::to_string(o.dtype)).c_str(),
              std::string(frugal::to_string(o.op)).c_str(), o.transport.c_str(),
              mpi_library_version().c_str(), thread_level_name(thread_level).c_str());
  std::printf(
      "# mode %s; iterations per method: %d timed + %d warmup%s; segment %s; timeout %.3g s; "
      "%s\n",
      std::string(to_string(o.mode)).c_str(), o.iters, o.warmup,
      o.scale_iterations ? ", scaled down from 16 MiB up" : "",
      o.segment_bytes == 0 ? "library default" : (std::to_string(o.segment_bytes) + " B").c_str(),
      static_cast<double>(timeout.count()) / 1000.0,
      o.check ? "results checked against the exact sum (--ranks-check)" : "results not checked");
  std::printf(
      "# latency: microseconds, max over ranks of each rank's median / p95 / min / max; GB/s = "
      "1e9 B/s; algbw = eff = bytes / median; busbw = algbw * 2(P-1)/P\n");
  if (hierarchy != nullptr) {
    std::printf(
        "# hierarchical rows: %d host(s) x %d ranks (FRUGAL_HOST_ID, else hostname and network "
        "namespace)\n",
        hierarchy->topology().host_count(), hierarchy->topology().ranks_on_host());
  }
  std::printf("%s\n", table_header().c_str());
  std::fflush(stdout);
}

// The communicator frugal's methods run on, over --transport.
std::unique_ptr<frugal::Communicator> make_communicator(const BenchOptions& o,
                                                        frugal::CommunicatorOptions comm_options) {
  if (o.transport == "ucx") {
#ifdef FRUGAL_HAVE_UCX
    return frugal::make_ucx_communicator(MPI_COMM_WORLD, comm_options);
#else
    throw UsageError("--transport ucx: this frugal-bench was built without UCX (libucx-dev)");
#endif
  }
  return frugal::make_mpi_communicator(MPI_COMM_WORLD, comm_options);
}

// Runs the benchmark on every rank; returns the process exit code. Library failures abort the
// job (a failed collective can leave peers waiting forever in the next one).
int run(int argc, char** argv, int rank, int ranks, int thread_level) {
  const bool root = rank == 0;
  ParseResult parsed;
  try {
    parsed = parse_command_line(argc, argv);
  } catch (const UsageError& e) {
    if (root)
      std::cerr << "frugal-bench: " << e.what() << "\n(frugal-bench --help lists the options)\n";
    return kUsageExitCode;
  }
  if (parsed.help) {
    if (root) std::cout << help_text();
    return 0;
  }
  const BenchOptions& options = parsed.options;

  std::ofstream json;
  std::ofstream csv;
  int files_ok = 1;
  if (root) {
    const auto open = [&](std::ofstream& file, const std::string& path, const char* flag) {
      if (path.empty()) return;
      file.open(path, std::ios::out | std::ios::trunc);
      if (!file) {
        std::cerr << "frugal-bench: " << flag << ": cannot open '" << path
                  << "' for writing: " << std::strerror(errno) << "\n";
        files_ok = 0;
      }
    };
    open(json, options.json_path, "--json");
    open(csv, options.csv_path, "--csv");
    if (csv.is_open()) csv << csv_header() << '\n';
  }
  MPI_Bcast(&files_ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
  if (files_ok == 0) return kUsageExitCode;

  std::int64_t wrong = 0;
  try {
    frugal::CommunicatorOptions comm_options;
    comm_options.timeout = options.timeout;
    const std::unique_ptr<frugal::Communicator> comm = make_communicator(options, comm_options);
    Runner runner(*comm, options);
    if (root) print_header(options, ranks, thread_level, comm->timeout(), runner.hierarchy());
    const auto begin = std::chrono::steady_clock::now();
    for (const std::size_t bytes : options.sizes) {
      const auto start = std::chrono::steady_clock::now();
      const std::vector<Row> rows = runner.run_size(bytes);
      if (!root) continue;
      for (const Row& row : rows) {
        std::printf("%s\n", table_row(row).c_str());
        if (json.is_open()) json << json_line(row) << '\n';
        if (csv.is_open()) csv << csv_line(row) << '\n';
      }
      std::fflush(stdout);
      if (json.is_open()) json.flush();
      if (csv.is_open()) csv.flush();
      if (!options.quiet) {
        const auto now = std::chrono::steady_clock::now();
        std::fprintf(stderr, "frugal-bench: %s done in %.2f s (%d iterations; %.1f s so far)\n",
                     human_bytes(bytes).c_str(), std::chrono::duration<double>(now - start).count(),
                     rows.empty() ? 0 : rows.front().iters,
                     std::chrono::duration<double>(now - begin).count());
      }
    }
    wrong = runner.wrong_results();
  } catch (const UsageError& e) {
    // Raised identically on every rank (derived from the options alone).
    if (root) std::cerr << "frugal-bench: " << e.what() << "\n";
    return kUsageExitCode;
  } catch (const frugal::Error& e) {
    // One write per message, so that lines of different ranks do not interleave.
    std::fprintf(stderr, "frugal-bench: rank %d: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, kRuntimeErrorExitCode);
    return kRuntimeErrorExitCode;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "frugal-bench: rank %d: error: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, kRuntimeErrorExitCode);
    return kRuntimeErrorExitCode;
  }
  for (auto [file, path, flag] : {std::tuple{&json, &options.json_path, "--json"},
                                  std::tuple{&csv, &options.csv_path, "--csv"}}) {
    if (!file->is_open()) continue;
    file->close();
    if (!*file) {
      std::cerr << "frugal-bench: " << flag << ": writing '" << *path << "' failed\n";
      return kRuntimeErrorExitCode;
    }
  }
  if (wrong > 0) {
    if (root)
      std::cerr << "frugal-bench: --ranks-check: " << wrong
                << " wrong result(s); see the WRONG rows and the messages above\n";
    return kRuntimeErrorExitCode;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int thread_level = MPI_THREAD_SINGLE;
  // The level frugal itself would request: what a trainer with a communication thread gets.
  if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &thread_level) != MPI_SUCCESS) {
    std::fprintf(stderr, "frugal-bench: MPI_Init_thread failed\n");
    return kRuntimeErrorExitCode;
  }
  int rank = 0;
  int ranks = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  const int code = run(argc, argv, rank, ranks, thread_level);
  MPI_Finalize();
  return code;
}
