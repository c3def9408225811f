#pragma once

// The measuring loop of frugal-bench: buffers, correctness check, timing and the reduction of
// the per-rank statistics. Collective over MPI_COMM_WORLD.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "frugal/communicator.hpp"
#include "options.hpp"
#include "report.hpp"

namespace frugal::bench {

// Deterministic integer-valued input in [-128, 127], different on every rank, so that sums
// over any realistic number of ranks (and their division by P) are exact in float32.
void fill_input(std::span<float> data, int rank) noexcept;

// What one row keeps from call to call (its error feedback, PowerSGD's Q): the state of the
// collective the row runs.
struct MethodState {
  AllreduceState allreduce;
  PowerSgdState powersgd;
  HierarchicalState hierarchical;
};

class Runner {
 public:
  // Allocates buffers for the largest of options.sizes and, for hierarchical rows, finds which
  // ranks share a host (collective; an unusable topology is a UsageError on every rank). `comm`
  // must span MPI_COMM_WORLD.
  Runner(Communicator& comm, const BenchOptions& options);

  // The hosts the hierarchical rows run on; null without such rows.
  const Hierarchy* hierarchy() const noexcept { return hierarchy_.get(); }

  // Runs every method at `bytes` (all ranks call it with the same value). Returns the table
  // rows on rank 0 and an empty vector elsewhere. Throws frugal::Error from the library.
  std::vector<Row> run_size(std::size_t bytes);

  // (method, size) results that were wrong under --ranks-check, over all sizes so far (the
  // same number on every rank).
  std::int64_t wrong_results() const noexcept { return wrong_results_; }

 private:
  // One allreduce of `data` by `method`; frugal methods keep `state` across calls and report
  // into `stats` (PowerSGD: its wire bytes only).
  void run_once(const Method& method, std::span<float> data, MethodState* state,
                AllreduceStats* stats);
  PowerSgdOptions powersgd_options(const Method& method) const;
  // Whether `method` is gTop-k's allreduce, whose result holds at most k non-zeros.
  bool cuts_to_k(const Method& method) const noexcept;
  // --ranks-check of a gTop-k row: this rank's non-zeros in the work buffer beyond k.
  std::int64_t excess_nonzeros(const Method& method, std::size_t count, std::size_t bytes) const;
  // --ranks-check of a PowerSGD row: runs it once more, on fill_low_rank's input, and counts the
  // elements (this rank) farther than 1e-3 x max|exact| from the exact sum. Clobbers peer_.
  std::int64_t low_rank_misses(const Method& method, std::size_t count, std::size_t bytes);
  // Copies the pristine input of `count` elements into the work buffer.
  std::span<float> reset(std::size_t count);
  // Number of elements of the work buffer that differ from `expected` (this rank); reports the
  // first on stderr as "<what> ...".
  std::int64_t count_wrong(std::span<const float> expected, const Method& method, std::size_t bytes,
                           const char* what) const;
  // The exact sum (or average) of every rank's input into reference_, computed locally.
  void compute_reference(std::size_t count);

  Communicator& comm_;
  const BenchOptions& options_;
  std::vector<float> pristine_;
  std::vector<float> work_;
  std::vector<float> reference_;  // the exact result, computed locally from every rank's input
  std::vector<float> peer_;       // --ranks-check: rank 0's result of a compressed method
  std::vector<float> shard_;      // reduce_scatter methods: this rank's shard
  std::vector<float> low_rank_;   // --ranks-check of PowerSGD: the exact sum of the rank-R input
  std::unique_ptr<Hierarchy> hierarchy_;
  std::int64_t wrong_results_ = 0;
};

}  // namespace frugal::bench
