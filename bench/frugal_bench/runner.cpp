#include "runner.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstring>

#include "frugal/collectives/allreduce.hpp"
#include "stats.hpp"

namespace frugal::bench {

void fill_input(std::span<float> data, int rank) noexcept {
  const std::uint32_t salt = static_cast<std::uint32_t>(rank) * 0x9E3779B9u;
  for (std::size_t i = 0; i < data.size(); ++i) {
    std::uint32_t x = (static_cast<std::uint32_t>(i) * 2654435761u) ^ salt;
    x ^= x >> 15;
    data[i] = static_cast<float>(static_cast<int>(x & 0xFFu) - 128);
  }
}

namespace {

std::size_t largest(const std::vector<std::size_t>& sizes) {
  return sizes.empty() ? 0 : *std::max_element(sizes.begin(), sizes.end());
}

}  // namespace

Runner::Runner(Communicator& comm, const BenchOptions& options) : comm_(comm), options_(options) {
  const std::size_t count = largest(options.sizes) / sizeof(float);
  if (count > static_cast<std::size_t>(INT_MAX))
    throw UsageError("--sizes: at most " + std::to_string(std::size_t{INT_MAX} * sizeof(float)) +
                     " bytes (MPI counts are int)");
  // Touch every page now, so that no size pays for first-touch page faults while timed.
  pristine_.assign(count, 0.0f);
  work_.assign(count, 0.0f);
  if (options.check) reference_.assign(count, 0.0f);
}

std::span<float> Runner::reset(std::size_t count) {
  std::memcpy(work_.data(), pristine_.data(), count * sizeof(float));
  return std::span<float>(work_).first(count);
}

void Runner::run_once(const Method& method, std::span<float> data) {
  if (method.is_mpi()) {
    MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
    if (options_.op == ReduceOp::Average) {
      const auto ranks = static_cast<float>(comm_.size());
      for (float& x : data) x /= ranks;
    }
    return;
  }
  AllreduceOptions o;
  o.op = options_.op;
  o.algorithm = method.algorithm;
  o.segment_bytes = options_.segment_bytes;
  allreduce(comm_, data, o);
}

std::int64_t Runner::count_wrong(std::size_t count, const Method& method, std::size_t bytes) const {
  std::int64_t wrong = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < count; ++i) {
    // Exact comparison: the inputs are integers, so every correct result is bit-identical.
    if (!(work_[i] == reference_[i])) {
      if (wrong == 0) first = i;
      ++wrong;
    }
  }
  if (wrong > 0) {
    std::fprintf(stderr,
                 "frugal-bench: rank %d: %s at %zu bytes: %lld of %zu elements differ from "
                 "MPI_Allreduce's result; first at element %zu: got %g, expected %g\n",
                 comm_.rank(), std::string(algorithm_field(method)).c_str(), bytes,
                 static_cast<long long>(wrong), count, first, static_cast<double>(work_[first]),
                 static_cast<double>(reference_[first]));
  }
  return wrong;
}

std::vector<Row> Runner::run_size(std::size_t bytes) {
  const std::vector<Method>& methods = options_.methods;
  const std::size_t count = bytes / sizeof(float);
  const int ranks = comm_.size();
  fill_input(std::span<float>(pristine_).first(count), comm_.rank());
  const int iters = iterations_at(bytes, options_);
  const int warmup = warmup_at(bytes, options_);

  std::vector<std::string> check(methods.size(), "off");
  if (options_.check) {
    std::copy_n(pristine_.begin(), count, reference_.begin());
    run_once(Method::mpi(), std::span<float>(reference_).first(count));
    for (std::size_t m = 0; m < methods.size(); ++m) {
      if (methods[m].is_mpi()) {
        check[m] = "ref";
        continue;
      }
      run_once(methods[m], reset(count));
      const std::int64_t local = count_wrong(count, methods[m], bytes);
      std::int64_t total = 0;
      MPI_Allreduce(&local, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
      check[m] = total == 0 ? "ok" : "wrong";
      if (total != 0) ++wrong_results_;
    }
  }

  // Round-robin over the methods, so that drift (other load on the machine) hits all alike.
  for (int w = 0; w < warmup; ++w) {
    for (const Method& method : methods) {
      const std::span<float> data = reset(count);
      MPI_Barrier(MPI_COMM_WORLD);
      run_once(method, data);
    }
  }
  std::vector<std::vector<double>> samples(methods.size());
  for (auto& s : samples) s.reserve(static_cast<std::size_t>(iters));
  for (int it = 0; it < iters; ++it) {
    for (std::size_t m = 0; m < methods.size(); ++m) {
      const std::span<float> data = reset(count);
      MPI_Barrier(MPI_COMM_WORLD);
      const auto start = std::chrono::steady_clock::now();
      run_once(methods[m], data);
      const auto stop = std::chrono::steady_clock::now();
      samples[m].push_back(std::chrono::duration<double, std::micro>(stop - start).count());
    }
  }

  std::vector<double> local(2 * methods.size());
  for (std::size_t m = 0; m < methods.size(); ++m) {
    const LatencySummary s = summarize(samples[m]);
    local[2 * m] = s.median_us;
    local[2 * m + 1] = s.p95_us;
  }
  std::vector<double> global(local.size());
  MPI_Reduce(local.data(), global.data(), static_cast<int>(local.size()), MPI_DOUBLE, MPI_MAX, 0,
             MPI_COMM_WORLD);
  if (comm_.rank() != 0) return {};

  std::vector<Row> rows;
  std::optional<double> mpi_median;
  for (std::size_t m = 0; m < methods.size(); ++m) {
    const Method& method = methods[m];
    Row row;
    row.method = method_field(method);
    row.algorithm = algorithm_field(method);
    row.selected = method.is_mpi() || method.algorithm != AllreduceAlgorithm::Auto
                       ? row.algorithm
                       : std::string(to_string(choose_allreduce_algorithm(bytes, ranks)));
    // The baseline is Open MPI's own collective whatever frugal runs over.
    row.transport = method.is_mpi() ? "mpi" : std::string(comm_.transport().name());
    row.ranks = ranks;
    row.bytes = bytes;
    row.dtype = to_string(options_.dtype);
    row.op = to_string(options_.op);
    row.iters = iters;
    row.warmup = warmup;
    row.median_us = global[2 * m];
    row.p95_us = global[2 * m + 1];
    row.algbw_gbps = algbw_gbps(bytes, row.median_us);
    row.busbw_gbps = busbw_gbps(row.algbw_gbps, ranks);
    row.check = check[m];
    if (method.is_mpi()) mpi_median = row.median_us;
    rows.push_back(std::move(row));
  }
  if (mpi_median && *mpi_median > 0) {
    for (Row& row : rows) row.vs_mpi = row.median_us / *mpi_median;
  }
  return rows;
}

}  // namespace frugal::bench
