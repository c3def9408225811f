#pragma once

// Command line of frugal-bench: what to run, at which sizes, how often. Pure (no MPI), so that
// the unit tests can exercise every parsing rule.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/compression/compressor.hpp"
#include "frugal/dtype.hpp"
#include "frugal/enum_names.hpp"

namespace frugal::bench {

// Bad command-line input. main() prints the message and exits with kUsageExitCode.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

inline constexpr int kUsageExitCode = 2;

// One thing the benchmark times: a frugal dense allreduce algorithm, a compressed allreduce
// (with the algorithm given in --methods, or chosen by the library), PowerSGD, Open MPI's own
// MPI_Allreduce as the baseline, or a plain memcpy of the buffer on every rank at once (the
// memory-bound floor, measured in the same run).
struct Method {
  enum class Kind { Dense, Mpi, Compressed, Memcpy, PowerSgd };
  Kind kind = Kind::Dense;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;      // Dense and Compressed
  compression::Method compression = compression::Method::None;  // Compressed only
  // compressed_reduce_scatter instead of an allreduce (Dense: method None): "<method>:
  // reduce_scatter" in --methods; timed alone, checked after an untimed allgather of the shards.
  bool reduce_scatter = false;
  // compressed_allgather of every rank's shard of the exact sum (Dense: method None), what the
  // sharded optimizer's parameter allgather does: "<method>:shard_allgather" in --methods.
  bool shard_allgather = false;
  // hierarchical_allreduce (Dense or Compressed): "<method>:hierarchical" in --methods.
  bool hierarchical = false;
  // gTop-k (CompressionConfig::gtopk) on this top-k row whatever --topk-gtopk says: "topk:gtopk".
  bool gtopk = false;
  // PowerSgd: the approximation's rank r; 0 until parse_command_line resolves it from
  // --powersgd-rank ("powersgd" in --methods; "powersgd:R" names it).
  int powersgd_rank = 0;

  static Method dense(AllreduceAlgorithm a) { return {Kind::Dense, a, compression::Method::None}; }
  static Method mpi() { return {Kind::Mpi, AllreduceAlgorithm::Auto, compression::Method::None}; }
  static Method memcpy() {
    return {Kind::Memcpy, AllreduceAlgorithm::Auto, compression::Method::None};
  }
  static Method compressed(compression::Method m, AllreduceAlgorithm a = AllreduceAlgorithm::Auto) {
    return {Kind::Compressed, a, m};
  }
  bool is_mpi() const noexcept { return kind == Kind::Mpi; }
  bool is_memcpy() const noexcept { return kind == Kind::Memcpy; }
  bool is_compressed() const noexcept { return kind == Kind::Compressed; }
  bool is_powersgd() const noexcept { return kind == Kind::PowerSgd; }
  static Method halves(compression::Method m) {
    return {m == compression::Method::None ? Kind::Dense : Kind::Compressed,
            AllreduceAlgorithm::Auto, m, true};
  }
  static Method gather(compression::Method m) {
    Method method = halves(m);
    method.reduce_scatter = false;
    method.shard_allgather = true;
    return method;
  }
  static Method hierarchy(compression::Method m) {
    Method method = halves(m);
    method.reduce_scatter = false;
    method.hierarchical = true;
    return method;
  }
  static Method global_topk() {
    Method method =
        compressed(compression::Method::TopK, AllreduceAlgorithm::SparseRecursiveDoubling);
    method.gtopk = true;
    return method;
  }
  static Method powersgd(int rank = 0) {
    Method method;
    method.kind = Kind::PowerSgd;
    method.powersgd_rank = rank;
    return method;
  }
  friend bool operator==(const Method&, const Method&) = default;
};

// The JSON "method" field: "dense" for frugal's dense allreduce, "mpi" for MPI_Allreduce,
// "powersgd", the compression method's name ("fp16", "bf16", "topk", "onebit", "ternary",
// "qsgd") otherwise.
std::string_view method_field(const Method& method) noexcept;
// The JSON "algorithm" field: "ring", "recursive_doubling", "rabenseifner", "auto",
// "reduce_scatter", "shard_allgather", "hierarchical", "gtopk", "rank<r>" for PowerSGD, or
// "MPI_Allreduce" for the baseline.
std::string algorithm_field(const Method& method);

// Sizes at and above this many bytes run fewer iterations (see iterations_at).
inline constexpr std::size_t kLargeMessageBytes = std::size_t{16} << 20;
// Scaling never takes the timed iterations below this (unless --iters itself is lower).
inline constexpr int kMinLargeIterations = 10;

// --mode: a preset of sizes, iterations and warmup. Explicit --sizes, --iters and --warmup
// override the preset's values.
enum class Mode {
  All,        // 4:128M, 100 iterations, 10 warmup (the default)
  Latency,    // 4:64K, 1000 iterations, 100 warmup: small messages, many samples
  Bandwidth,  // 1M:128M, 20 iterations, 3 warmup: large messages (scaled as usual above 16M)
};

struct ModeDefaults {
  std::string_view sizes;
  int iters;
  int warmup;
};
ModeDefaults mode_defaults(Mode mode) noexcept;

}  // namespace frugal::bench

namespace frugal {

template <>
struct EnumNames<bench::Mode> {
  using E = bench::Mode;
  static constexpr std::array<EnumName<E>, 3> table{
      {{E::All, "all"}, {E::Latency, "latency"}, {E::Bandwidth, "bandwidth"}}};
};

}  // namespace frugal

namespace frugal::bench {

constexpr std::string_view to_string(Mode mode) noexcept {
  return enum_name(mode);
}
// "all", "latency" or "bandwidth"; anything else is a UsageError naming --mode.
Mode parse_mode(std::string_view text);

struct BenchOptions {
  Mode mode = Mode::All;
  std::vector<std::size_t> sizes;  // bytes per rank's buffer, ascending
  int iters = 100;
  int warmup = 10;
  bool scale_iterations = true;  // false: --no-scale
  std::vector<Method> methods;
  // Parameters of the compressed methods (the options shared with frugal-train: --density,
  // --bits, --bucket-size, ...); `method` is set per row.
  compression::CompressionConfig compression;
  bool error_feedback = true;
  // PowerSGD rows (--powersgd-min-compression-rate; the rank is per row, in Method). They
  // compress from the first call (start_iter 0): the dense steps PowerSGD starts with are what
  // the dense rows time.
  double powersgd_min_compression_rate = 2.0;
  std::uint64_t seed = 0;
  DType dtype = DType::Float32;
  ReduceOp op = ReduceOp::Sum;
  std::optional<std::chrono::milliseconds> timeout;  // unset: the communicator's default
  // --ranks-check (alias --check): every method's result compared with the exact sum.
  bool check = false;
  std::string json_path;          // empty: no JSON output
  std::string csv_path;           // empty: no CSV output
  std::size_t segment_bytes = 0;  // 0: the library's default
  bool quiet = false;             // no progress lines on stderr
  // What frugal's dense methods run over: "mpi" (Open MPI point-to-point) or "ucx" (UCX tagged
  // messages, MPI only to exchange addresses). The MPI_Allreduce baseline is Open MPI either way.
  std::string transport = "mpi";
};

struct ParseResult {
  bool help = false;  // --help was given: print help_text() and exit 0
  BenchOptions options;
};

// Parses argv. Throws UsageError naming the offending flag or value.
ParseResult parse_command_line(int argc, const char* const argv[]);

// The --help text: every flag, every output column, the formulas and the iteration rule.
std::string help_text();

// "<n>[K|M|G]" (case-insensitive suffix, powers of 1024) -> bytes. `flag` names the option in
// error messages. Throws UsageError on anything else, and on overflow.
std::size_t parse_byte_count(std::string_view text, std::string_view flag);

// "MIN:MAX" -> MIN, 2·MIN, 4·MIN, … up to MAX (MAX included even when not on the doubling
// sequence); "N" -> {N}. Every size must be a positive multiple of `element_bytes`.
std::vector<std::size_t> parse_sizes(std::string_view text, std::size_t element_bytes = 4);

// Comma-separated list of ring, rd (or recursive_doubling), rabenseifner, auto, mpi; order
// kept; duplicates and empty entries are errors.
std::vector<Method> parse_methods(std::string_view text);

// "mpi" or "ucx"; anything else is a UsageError naming --transport.
std::string parse_transport(std::string_view text);

// --methods: comma-separated dense, fp16, bf16, topk, onebit, ternary, qsgd, powersgd. "dense"
// keeps the dense entries of `algorithms` (mpi always stays); each other name appends a
// compressed method, optionally with its algorithm after a colon ("onebit:allgather",
// "topk:sparse_rd"; without one, auto). "<method>:reduce_scatter", "<method>:shard_allgather"
// and "<method>:hierarchical" (dense included) run those collectives, "topk:gtopk" gTop-k,
// "powersgd:R" PowerSGD of rank R
// ("powersgd": rank 0, resolved later from --powersgd-rank). Duplicates, empty and unknown
// entries, and an algorithm that cannot run the method, are errors.
std::vector<Method> combine_methods(std::string_view text, const std::vector<Method>& algorithms);

// Positive seconds, fractions allowed ("0.5") -> milliseconds (at least 1 ms).
std::chrono::milliseconds parse_timeout(std::string_view text);

// Timed iterations and warmup iterations at `bytes`: below kLargeMessageBytes exactly
// options.iters / options.warmup; at and above it, scaled by kLargeMessageBytes / bytes
// (halved per doubling), with at least min(kMinLargeIterations, iters) timed and
// min(1, warmup) warmup iterations. With scale_iterations == false, never scaled.
int iterations_at(std::size_t bytes, const BenchOptions& options) noexcept;
int warmup_at(std::size_t bytes, const BenchOptions& options) noexcept;

}  // namespace frugal::bench
