#pragma once

// frugal-bench's JSON Lines rows, read back for the model: what ran (method, algorithm), where
// (P, bytes) and how long it took.

#include <cstddef>
#include <iosfwd>
#include <optional>
#include <string>
#include <vector>

#include "options.hpp"

namespace frugal::model {

struct MeasuredRow {
  bench::Method method;  // the algorithm that ran (auto resolved to `selected`)
  int ranks = 0;
  std::size_t bytes = 0;
  double median_seconds = 0;
  // The fastest and slowest iteration (each the max over ranks); unset in rows without them.
  std::optional<double> min_seconds;
  std::optional<double> max_seconds;
  std::optional<double> wire_bytes_per_rank;  // unset for MPI_Allreduce
};

// Reads every row of a frugal-bench --json file. `source` names it in messages. Throws
// frugal::Error(InvalidArgument) naming the file and line on a line that is not a flat JSON
// object with frugal-bench's fields, or names an unknown method or algorithm.
std::vector<MeasuredRow> read_rows(std::istream& in, const std::string& source);
std::vector<MeasuredRow> load_rows(const std::string& path);

}  // namespace frugal::model
