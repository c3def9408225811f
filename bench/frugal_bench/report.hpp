#pragma once

// What frugal-bench prints: the aligned stdout table and the JSON Lines rows. Pure.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace frugal::bench {

// One (size, method) result. Later issues add fields (compression method, bytes on the wire,
// ...): add them here, to json_line() and, if they belong in the table, to the table functions.
struct Row {
  std::string method;     // "dense" | "mpi"
  std::string algorithm;  // "ring", "recursive_doubling", "rabenseifner", "auto", "MPI_Allreduce"
  std::string selected;   // the algorithm that ran: what auto picked, otherwise == algorithm
  std::string transport = "mpi";
  int ranks = 0;
  std::size_t bytes = 0;
  std::string dtype = "float32";
  std::string op = "sum";
  int iters = 0;
  int warmup = 0;
  double median_us = 0;  // max over ranks of each rank's median
  double p95_us = 0;     // max over ranks of each rank's 95th percentile
  double min_us = 0;     // max over ranks of each rank's fastest iteration
  double max_us = 0;     // max over ranks of each rank's slowest iteration
  double algbw_gbps = 0;
  double busbw_gbps = 0;
  std::optional<double> vs_mpi;  // median_us / MPI_Allreduce's median_us at the same size
  std::string check = "off";     // "ok" | "wrong" | "off" (--ranks-check not given)
  // --ranks-check: elements that were wrong, summed over ranks (unset without the check).
  std::optional<std::int64_t> wrong;
  // Measured by frugal (unset for the MPI_Allreduce row).
  std::optional<double> wire_bytes_per_rank;  // max over ranks of the bytes one rank sends
  std::optional<double> compression_ratio;    // 2(P-1)/P * bytes / wire_bytes_per_rank
  double effective_gbps = 0;                  // bytes / median time (dense-equivalent)
  std::optional<double> rel_error;            // ||y - exact|| / ||exact||
  std::optional<double> encode_us;            // median over iterations, max over ranks
  std::optional<double> comm_us;
  std::optional<double> decode_us;
};

// The table's algorithm cell: `algorithm`, or "auto(<selected>)" for auto; compressed methods
// are prefixed with the method ("onebit/auto(two_phase)", "onebit/two_phase" when named).
std::string display_algorithm(const Row& row);

// Column header line and one row line of the stdout table (fixed widths, no trailing newline).
std::string table_header();
std::string table_row(const Row& row);

// "512 B", "4 KiB", "128 MiB", "1.5 GiB": for progress lines.
std::string human_bytes(std::size_t bytes);

// One JSON object on one line (no trailing newline), fields in the order of Row.
std::string json_line(const Row& row);

// CSV with the same fields as json_line, in the same order: the header line and one row (no
// trailing newline). Null fields are empty cells; text containing a comma, quote or line break
// is quoted with doubled quotes (RFC 4180).
std::string csv_header();
std::string csv_line(const Row& row);

// JSON string literal for `text`, quotes included, with JSON escapes.
std::string json_string(std::string_view text);
// JSON number (shortest text that reads back to the same double); null for NaN or infinity.
std::string json_number(double value);

}  // namespace frugal::bench
