#pragma once

// The measuring loop of frugal-bench: buffers, correctness check, timing and the reduction of
// the per-rank statistics. Collective over MPI_COMM_WORLD.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/communicator.hpp"
#include "options.hpp"
#include "report.hpp"

namespace frugal::bench {

// Deterministic integer-valued input in [-128, 127], different on every rank, so that sums
// over any realistic number of ranks (and their division by P) are exact in float32.
void fill_input(std::span<float> data, int rank) noexcept;

class Runner {
 public:
  // Allocates buffers for the largest of options.sizes. `comm` must span MPI_COMM_WORLD.
  Runner(Communicator& comm, const BenchOptions& options);

  // Runs every method at `bytes` (all ranks call it with the same value). Returns the table
  // rows on rank 0 and an empty vector elsewhere. Throws frugal::Error from the library.
  std::vector<Row> run_size(std::size_t bytes);

  // (method, size) results that were wrong under --ranks-check, over all sizes so far (the
  // same number on every rank).
  std::int64_t wrong_results() const noexcept { return wrong_results_; }

 private:
  // One allreduce of `data` by `method`; frugal methods keep `state` across calls and report
  // into `stats`.
  void run_once(const Method& method, std::span<float> data, AllreduceState* state,
                AllreduceStats* stats);
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
  std::int64_t wrong_results_ = 0;
};

}  // namespace frugal::bench
