#include "runner.hpp"

#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/error.hpp"
#include "low_rank.hpp"
#include "stats.hpp"

namespace frugal::bench {

void fill_input(std::span<float> data, int rank) noexcept {
  // A full-avalanche hash of (index, rank): the ranks' inputs must be independent, or their sum
  // is smaller than it should be and the relative error of compressed methods looks inflated
  // (a multiplicative hash XOR a per-rank salt made the 4-rank sum 8x too small).
  const std::uint32_t salt = static_cast<std::uint32_t>(rank) * 0x85EBCA6Bu + 0x27D4EB2Fu;
  for (std::size_t i = 0; i < data.size(); ++i) {
    std::uint32_t x = static_cast<std::uint32_t>(i) * 0x9E3779B9u ^ salt;
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
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
  reference_.assign(count, 0.0f);
  if (options.check) peer_.assign(count, 0.0f);
  shard_.assign(count / static_cast<std::size_t>(comm.size()) + 1, 0.0f);
  const auto any = [&](bool (*which)(const Method&)) {
    return std::any_of(options.methods.begin(), options.methods.end(), which);
  };
  if (options.check && any([](const Method& m) { return m.is_powersgd(); }))
    low_rank_.assign(count, 0.0f);
  if (any([](const Method& m) { return m.hierarchical; })) {
    try {
      hierarchy_ = std::make_unique<Hierarchy>(comm);
    } catch (const Error& e) {
      // The topology is the same on every rank, so every rank refuses it alike.
      if (e.code() != ErrorCode::InvalidArgument) throw;
      throw UsageError(std::string("--methods <method>:hierarchical: ") + e.what());
    }
  }
}

void Runner::compute_reference(std::size_t count) {
  // Integer-valued inputs in [-128, 127]: every partial sum is an integer far below 2^24, so
  // float addition is exact in any order, and one division gives the correctly rounded average,
  // the same as sum-then-divide in any correct implementation.
  const std::span<float> exact = std::span<float>(reference_).first(count);
  const std::span<float> scratch = std::span<float>(work_).first(count);
  std::fill(exact.begin(), exact.end(), 0.0f);
  for (int r = 0; r < comm_.size(); ++r) {
    fill_input(scratch, r);
    for (std::size_t i = 0; i < count; ++i) exact[i] += scratch[i];
  }
  if (options_.op == ReduceOp::Average) {
    const auto ranks = static_cast<float>(comm_.size());
    for (float& x : exact) x /= ranks;
  }
}

std::span<float> Runner::reset(std::size_t count) {
  std::memcpy(work_.data(), pristine_.data(), count * sizeof(float));
  return std::span<float>(work_).first(count);
}

PowerSgdOptions Runner::powersgd_options(const Method& method) const {
  PowerSgdOptions p;
  p.rank = method.powersgd_rank;
  p.min_compression_rate = options_.powersgd_min_compression_rate;
  p.start_iter = 0;  // every call compresses: the dense start is what the dense rows time
  p.seed = options_.seed;
  p.error_feedback = options_.error_feedback;
  p.op = options_.op;
  p.segment_bytes = options_.segment_bytes;
  return p;
}

bool Runner::cuts_to_k(const Method& method) const noexcept {
  return method.is_compressed() && method.compression == compression::Method::TopK &&
         !method.hierarchical && (method.gtopk || options_.compression.gtopk);
}

void Runner::run_once(const Method& method, std::span<float> data, MethodState* state,
                      AllreduceStats* stats) {
  if (method.is_memcpy()) {
    std::memcpy(data.data(), pristine_.data(), data.size_bytes());
    return;
  }
  if (method.is_mpi()) {
    MPI_Allreduce(MPI_IN_PLACE, data.data(), static_cast<int>(data.size()), MPI_FLOAT, MPI_SUM,
                  MPI_COMM_WORLD);
    if (options_.op == ReduceOp::Average) {
      const auto ranks = static_cast<float>(comm_.size());
      for (float& x : data) x /= ranks;
    }
    return;
  }
  if (method.is_powersgd()) {
    PowerSgdOptions p = powersgd_options(method);
    PowerSgdStats done;
    p.stats = &done;
    const MatrixShape shape = matrix_shape(data.size());
    const PowerSgdTensor tensor{data, shape.rows, shape.cols};
    powersgd_allreduce(comm_, std::span<const PowerSgdTensor>(&tensor, 1), state->powersgd, p);
    if (stats != nullptr) stats->wire_bytes_sent = done.wire_bytes_sent;
    return;
  }
  AllreduceOptions o;
  o.op = options_.op;
  o.algorithm = method.algorithm;
  o.segment_bytes = options_.segment_bytes;
  o.stats = stats;
  if (method.is_compressed()) {
    o.compression = options_.compression;
    o.compression.method = method.compression;
    o.compression.gtopk = o.compression.gtopk || method.gtopk;
    o.error_feedback = options_.error_feedback;
    o.seed = options_.seed;
    o.state = &state->allreduce;
  }
  if (method.hierarchical) {
    o.state = nullptr;  // its residuals live in the HierarchicalState
    hierarchical_allreduce(*hierarchy_, data, o, &state->hierarchical);
    return;
  }
  if (method.reduce_scatter) {
    const ShardRange mine = reduce_scatter_shard(data.size(), comm_.size(), comm_.rank());
    compressed_reduce_scatter(comm_, data, std::span<float>(shard_).first(mine.count), o);
    return;
  }
  if (method.shard_allgather) {
    // This rank's shard of the exact sum, as a sharded optimizer holds its updated parameters.
    const ShardRange mine = reduce_scatter_shard(data.size(), comm_.size(), comm_.rank());
    compressed_allgather(comm_, std::span<const float>(reference_).subspan(mine.offset, mine.count),
                         data, o);
    return;
  }
  allreduce(comm_, data, o);
}

namespace {

// ||y - exact|| / ||exact||, in double.
double relative_error(std::span<const float> y, std::span<const float> exact) {
  double diff = 0, norm = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const double d = static_cast<double>(y[i]) - exact[i];
    diff += d * d;
    norm += static_cast<double>(exact[i]) * exact[i];
  }
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

}  // namespace

std::int64_t Runner::count_wrong(std::span<const float> expected, const Method& method,
                                 std::size_t bytes, const char* what) const {
  std::int64_t wrong = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < expected.size(); ++i) {
    // Exact comparison: a correct dense result is bit-identical to the exact sum, and a
    // compressed one to rank 0's. NaN never compares equal, so it counts as wrong.
    if (!(work_[i] == expected[i])) {
      if (wrong == 0) first = i;
      ++wrong;
    }
  }
  if (wrong > 0) {
    std::fprintf(stderr,
                 "frugal-bench: rank %d: %s/%s at %zu bytes: %lld of %zu elements differ from %s; "
                 "first at element %zu: got %g, expected %g\n",
                 comm_.rank(), std::string(method_field(method)).c_str(),
                 algorithm_field(method).c_str(), bytes, static_cast<long long>(wrong),
                 expected.size(), what, first, static_cast<double>(work_[first]),
                 static_cast<double>(expected[first]));
  }
  return wrong;
}

std::int64_t Runner::excess_nonzeros(const Method& method, std::size_t count,
                                     std::size_t bytes) const {
  compression::CompressionConfig topk = options_.compression;
  topk.method = compression::Method::TopK;
  const std::size_t k = compression::make_compressor(topk)->k_for(count);
  const auto nonzeros = static_cast<std::size_t>(
      std::count_if(work_.begin(), work_.begin() + static_cast<std::ptrdiff_t>(count),
                    [](float x) { return x != 0.0f; }));
  if (nonzeros <= k) return 0;
  std::fprintf(stderr,
               "frugal-bench: rank %d: %s/%s at %zu bytes: %zu non-zero elements, gTop-k keeps at "
               "most k = %zu\n",
               comm_.rank(), std::string(method_field(method)).c_str(),
               algorithm_field(method).c_str(), bytes, nonzeros, k);
  return static_cast<std::int64_t>(nonzeros - k);
}

std::int64_t Runner::low_rank_misses(const Method& method, std::size_t count, std::size_t bytes) {
  const MatrixShape shape = matrix_shape(count);
  const int r = method.powersgd_rank;
  const std::span<float> exact = std::span<float>(low_rank_).first(count);
  const std::span<float> scratch = std::span<float>(peer_).first(count);
  std::fill(exact.begin(), exact.end(), 0.0f);
  for (int rank = 0; rank < comm_.size(); ++rank) {
    fill_low_rank(scratch, shape, r, rank);
    for (std::size_t i = 0; i < count; ++i) exact[i] += scratch[i];
  }
  if (options_.op == ReduceOp::Average) {
    const auto ranks = static_cast<float>(comm_.size());
    for (float& x : exact) x /= ranks;
  }
  const std::span<float> data = std::span<float>(work_).first(count);
  fill_low_rank(data, shape, r, comm_.rank());
  MethodState fresh;
  run_once(method, data, &fresh, nullptr);
  float largest = 0.0f;
  for (const float x : exact) largest = std::max(largest, std::abs(x));
  const double tolerance = 1e-3 * static_cast<double>(largest);
  std::int64_t misses = 0;
  std::size_t first = 0;
  for (std::size_t i = 0; i < count; ++i) {
    // Written so that NaN counts as a miss.
    if (!(std::abs(static_cast<double>(data[i]) - exact[i]) <= tolerance)) {
      if (misses == 0) first = i;
      ++misses;
    }
  }
  if (misses > 0) {
    std::fprintf(stderr,
                 "frugal-bench: rank %d: %s/%s at %zu bytes: on a %zu x %zu input whose sum has "
                 "rank %d, %lld of %zu elements differ from the exact sum by more than %g; first "
                 "at element %zu: got %g, expected %g\n",
                 comm_.rank(), std::string(method_field(method)).c_str(),
                 algorithm_field(method).c_str(), bytes, shape.rows, shape.cols, r,
                 static_cast<long long>(misses), count, tolerance, first,
                 static_cast<double>(data[first]), static_cast<double>(exact[first]));
  }
  return misses;
}

std::vector<Row> Runner::run_size(std::size_t bytes) {
  const std::vector<Method>& methods = options_.methods;
  const std::size_t count = bytes / sizeof(float);
  const int ranks = comm_.size();
  fill_input(std::span<float>(pristine_).first(count), comm_.rank());
  const int iters = iterations_at(bytes, options_);
  const int warmup = warmup_at(bytes, options_);

  // Untimed pass: every method's relative error against the exact sum and, with
  // --ranks-check, its correctness.
  compute_reference(count);
  const std::span<const float> exact = std::span<const float>(reference_).first(count);
  std::vector<std::string> check(methods.size(), "off");
  std::vector<std::optional<std::int64_t>> wrong(methods.size());
  std::vector<double> rel_error(methods.size(), 0.0);
  for (std::size_t m = 0; m < methods.size(); ++m) {
    MethodState fresh;
    run_once(methods[m], reset(count), &fresh, nullptr);
    if (methods[m].reduce_scatter) {
      // Every shard to every rank (untimed), so that the result is checked as an allreduce's.
      AllreduceState gather_state;
      AllreduceOptions g;
      g.compression = options_.compression;
      g.compression.method = methods[m].compression;
      g.error_feedback = options_.error_feedback && methods[m].is_compressed();
      g.seed = options_.seed;
      g.state = g.error_feedback ? &gather_state : nullptr;
      const ShardRange mine = reduce_scatter_shard(count, ranks, comm_.rank());
      compressed_allgather(comm_, std::span<const float>(shard_).first(mine.count),
                           std::span<float>(work_).first(count), g);
    }
    const std::span<const float> result = std::span<const float>(work_).first(count);
    if (methods[m].is_memcpy()) continue;  // not an allreduce: nothing to check
    rel_error[m] = relative_error(result, exact);
    if (!options_.check) continue;
    std::int64_t local = 0;
    if (methods[m].is_compressed() || methods[m].is_powersgd()) {
      // Compressed results are not the exact sum; they must be the same on every rank (and
      // finite), so every rank compares its result with rank 0's.
      const std::span<float> root = std::span<float>(peer_).first(count);
      if (comm_.rank() == 0) std::copy(result.begin(), result.end(), root.begin());
      MPI_Bcast(root.data(), static_cast<int>(count), MPI_FLOAT, 0, MPI_COMM_WORLD);
      local = count_wrong(root, methods[m], bytes, "rank 0's result");
      if (local == 0 && !std::isfinite(rel_error[m])) local = 1;
      // gTop-k's sum is cut back to k (with one rank, nothing is cut).
      if (cuts_to_k(methods[m]) && ranks > 1) local += excess_nonzeros(methods[m], count, bytes);
      if (methods[m].is_powersgd()) local += low_rank_misses(methods[m], count, bytes);
    } else {
      local = count_wrong(exact, methods[m], bytes, "the exact sum");
    }
    std::int64_t total = 0;
    MPI_Allreduce(&local, &total, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    check[m] = total == 0 ? "ok" : "wrong";
    wrong[m] = total;
    if (total != 0) ++wrong_results_;
  }

  // Each frugal method keeps its state across this size's iterations, as in training.
  std::vector<MethodState> states(methods.size());
  std::vector<std::vector<AllreduceStats>> breakdown(methods.size());

  // Round-robin over the methods, so that drift (other load on the machine) hits all alike.
  for (int w = 0; w < warmup; ++w) {
    for (const Method& method : methods) {
      const std::span<float> data = reset(count);
      MPI_Barrier(MPI_COMM_WORLD);
      const auto m = static_cast<std::size_t>(&method - methods.data());
      run_once(method, data, &states[m], nullptr);
    }
  }
  std::vector<std::vector<double>> samples(methods.size());
  for (auto& s : samples) s.reserve(static_cast<std::size_t>(iters));
  for (int it = 0; it < iters; ++it) {
    for (std::size_t m = 0; m < methods.size(); ++m) {
      const std::span<float> data = reset(count);
      MPI_Barrier(MPI_COMM_WORLD);
      AllreduceStats stats;
      const auto start = std::chrono::steady_clock::now();
      run_once(methods[m], data, &states[m], &stats);
      const auto stop = std::chrono::steady_clock::now();
      samples[m].push_back(std::chrono::duration<double, std::micro>(stop - start).count());
      breakdown[m].push_back(stats);
    }
  }

  // Per method: median, p95, median encode/comm/decode, wire bytes; max over ranks of each.
  constexpr std::size_t kFields = 8;
  std::vector<double> local(kFields * methods.size());
  for (std::size_t m = 0; m < methods.size(); ++m) {
    const LatencySummary s = summarize(samples[m]);
    local[kFields * m] = s.median_us;
    local[kFields * m + 1] = s.p95_us;
    auto median_of = [&](double AllreduceStats::*field) {
      std::vector<double> v;
      for (const AllreduceStats& st : breakdown[m]) v.push_back(st.*field * 1e6);
      return summarize(v).median_us;
    };
    local[kFields * m + 2] = median_of(&AllreduceStats::encode_seconds);
    local[kFields * m + 3] = median_of(&AllreduceStats::comm_seconds);
    local[kFields * m + 4] = median_of(&AllreduceStats::decode_seconds);
    local[kFields * m + 5] =
        breakdown[m].empty() ? 0.0 : static_cast<double>(breakdown[m].back().wire_bytes_sent);
    local[kFields * m + 6] = *std::min_element(samples[m].begin(), samples[m].end());
    local[kFields * m + 7] = *std::max_element(samples[m].begin(), samples[m].end());
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
    if (method.is_powersgd()) {
      const MatrixShape shape = matrix_shape(count);
      row.selected = powersgd_compresses(shape.rows, shape.cols, powersgd_options(method))
                         ? row.algorithm
                         : "exact";
    } else if (method.hierarchical) {
      // The inter-host step's (rank 0's, which every host's local rank 0 shares).
      row.selected = breakdown[m].empty() ? "auto" : to_string(breakdown[m].back().algorithm);
    } else if (method.gtopk) {
      row.selected = to_string(AllreduceAlgorithm::SparseRecursiveDoubling);
    } else if (method.is_mpi() || method.reduce_scatter || method.shard_allgather ||
               method.algorithm != AllreduceAlgorithm::Auto) {
      row.selected = row.algorithm;
    } else if (method.is_compressed()) {
      AllreduceOptions chosen;
      chosen.compression = options_.compression;
      chosen.compression.method = method.compression;
      row.selected = to_string(choose_allreduce_algorithm(chosen, count, ranks));
    } else {
      row.selected = to_string(choose_allreduce_algorithm(bytes, ranks));
    }
    // The baseline is Open MPI's own collective whatever frugal runs over.
    row.transport = method.is_mpi()      ? "mpi"
                    : method.is_memcpy() ? "none"
                                         : std::string(comm_.transport().name());
    row.ranks = ranks;
    row.bytes = bytes;
    row.dtype = to_string(options_.dtype);
    row.op = to_string(options_.op);
    row.iters = iters;
    row.warmup = warmup;
    row.median_us = global[kFields * m];
    row.p95_us = global[kFields * m + 1];
    row.min_us = global[kFields * m + 6];
    row.max_us = global[kFields * m + 7];
    row.effective_gbps = algbw_gbps(bytes, row.median_us);
    // The dense reduce-scatter and allgather report no wire bytes (AllreduceStats: time only).
    const bool halves = method.reduce_scatter || method.shard_allgather;
    const bool bytes_known = !halves || method.is_compressed();
    if (!method.is_mpi() && !method.is_memcpy() && bytes_known) {
      if (!method.is_powersgd()) {  // PowerSGD does not time its parts
        row.encode_us = global[kFields * m + 2];
        row.comm_us = global[kFields * m + 3];
        row.decode_us = global[kFields * m + 4];
      }
      row.wire_bytes_per_rank = global[kFields * m + 5];
      // The ratio is against a dense allreduce's bytes: a reduce-scatter or allgather sends half
      // of those, and a hierarchical row counts only what crosses hosts.
      if (*row.wire_bytes_per_rank > 0 && !halves && !method.hierarchical)
        row.compression_ratio = compression_ratio(bytes, ranks, *row.wire_bytes_per_rank);
    }
    row.algbw_gbps = algbw_gbps(bytes, row.median_us);
    row.busbw_gbps = busbw_gbps(row.algbw_gbps, ranks);
    row.rel_error = rel_error[m];
    row.check = check[m];
    row.wrong = wrong[m];
    if (method.is_mpi()) mpi_median = row.median_us;
    rows.push_back(std::move(row));
  }
  if (mpi_median && *mpi_median > 0) {
    for (Row& row : rows) row.vs_mpi = row.median_us / *mpi_median;
  }
  return rows;
}

}  // namespace frugal::bench
