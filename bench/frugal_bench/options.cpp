#include "options.hpp"

#include <algorithm>
#include <boost/program_options.hpp>
#include <charconv>
#include <cmath>
#include <limits>
#include <sstream>

#include "compression_cli.hpp"
#include "frugal/enum_names.hpp"

namespace frugal::bench {

namespace po = boost::program_options;

namespace {

constexpr std::string_view kDefaultMethods = "ring,rd,rabenseifner,auto,mpi";

std::string quoted(std::string_view text) {
  return "'" + std::string(text) + "'";
}

// The compression methods --methods takes besides dense: every method but None.
std::string known_compressed_methods() {
  std::string out;
  for (const compression::Method m : enum_values<compression::Method>()) {
    if (m == compression::Method::None) continue;
    if (!out.empty()) out += ", ";
    out += enum_name(m);
  }
  return out;
}

std::vector<std::string_view> split(std::string_view text, char separator) {
  std::vector<std::string_view> parts;
  std::size_t start = 0;
  while (true) {
    const std::size_t end = text.find(separator, start);
    parts.push_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) return parts;
    start = end + 1;
  }
}

po::options_description describe_options() {
  po::options_description d("Options");
  // clang-format off
  d.add_options()
    ("help,h", "print this help and exit")
    ("mode", po::value<std::string>()->value_name("MODE")->default_value("all"),
     "preset of --sizes / --iters / --warmup (explicit flags override it): all = 4:128M, 100, "
     "10; latency = 4:64K, 1000, 100 (small messages, many iterations); bandwidth = 1M:128M, "
     "20, 3 (large messages)")
    ("sizes", po::value<std::string>()->value_name("MIN:MAX"),
     "message sizes in bytes per rank: MIN:MAX runs MIN, 2*MIN, 4*MIN, ... up to MAX (MAX "
     "always included); a single N runs one size; a comma-separated list of both runs every "
     "size once, ascending (e.g. 1M,102400000 = 1 MiB and 25.6 M floats). Suffixes K, M, G are powers of 1024 "
     "(4K = 4096). Every size must be a positive multiple of the element size (4 for float32). "
     "Default: from --mode")
    ("iters", po::value<int>()->value_name("N"),
     "timed iterations per method and size (>= 1); scaled down for sizes >= 16M, see below. "
     "Default: from --mode")
    ("warmup", po::value<int>()->value_name("N"),
     "untimed warmup iterations per method and size (>= 0); scaled like --iters. Default: from "
     "--mode")
    ("no-scale", "use exactly --iters and --warmup at every size (no scaling for large sizes)")
    ("algorithms", po::value<std::string>()->value_name("LIST")->default_value(std::string(kDefaultMethods)),
     "comma-separated methods to run, in this order: ring, rd (= recursive_doubling), "
     "rabenseifner, auto (frugal's size-based choice), mpi (Open MPI's MPI_Allreduce, "
     "the baseline) and memcpy (every rank copies its buffer once, all at the same time: the "
     "memory-bound floor in the same run; its check and rel_err do not apply)")
    ("methods", po::value<std::string>()->value_name("LIST")->default_value("dense"),
     "comma-separated methods: dense (the --algorithms), fp16, bf16, topk, onebit, ternary, "
     "qsgd (compressed allreduces), powersgd. A compressed method may name its algorithm after "
     "a colon: two_phase or allgather for the quantizers, sparse_allgather or sparse_rd for "
     "topk (e.g. onebit:two_phase,onebit:allgather); without one frugal chooses (allgather for "
     "the quantizers at 2 ranks, two_phase beyond; sparse_allgather or sparse_rd for topk by "
     "density). <method>:reduce_scatter (dense or a quantizer) times the compressed "
     "reduce-scatter alone (its check and rel_err: after an untimed allgather of the shards), "
     "<method>:shard_allgather (likewise) the compressed allgather alone, of every rank's "
     "shard of the exact sum (the sharded optimizer's parameter allgather; checked as an "
     "allreduce). "
     "<method>:hierarchical (dense or any compressed method) times hierarchical_allreduce: a "
     "dense reduce-scatter within each host, <method> across hosts, a dense allgather within "
     "each host (hosts from FRUGAL_HOST_ID, else hostname and network namespace; every host "
     "must hold as many ranks). topk:gtopk is top-k with gTop-k (sparse_rd, the sum cut back "
     "to k at every step) whatever --topk-gtopk says. powersgd is PowerSGD of rank "
     "--powersgd-rank, powersgd:R of rank R (powersgd:1,powersgd:4 side by side): the buffer "
     "is one rows x cols matrix, cols the largest divisor of the element count up to its "
     "square root; it compresses from the first call (no dense start) and goes exact when the "
     "matrix is too small to compress (--powersgd-min-compression-rate)");
  compression::cli::add_compression_options(d);
  d.add_options()
    ("powersgd-rank", po::value<int>()->value_name("R")->default_value(1),
     "powersgd: rank R >= 1 of the approximation of the rows without one in --methods (as "
     "frugal-train's)")
    ("powersgd-min-compression-rate", po::value<double>()->value_name("X")->default_value(2.0, "2"),
     "powersgd: the matrix is compressed only if its dense size is more than X times its two "
     "factors, (rows + cols) x R; otherwise it is reduced exactly (X >= 1; as frugal-train's)")
    ("seed", po::value<std::uint64_t>()->value_name("N")->default_value(0),
     "seed of the stochastic quantizers' random streams and of PowerSGD's initial Q")
    ("dtype", po::value<std::string>()->value_name("TYPE")->default_value("float32"),
     "element type; only float32 is supported (the type gradients are reduced in)")
    ("op", po::value<std::string>()->value_name("OP")->default_value("sum"),
     "sum | average. For mpi, average is MPI_Allreduce(MPI_SUM) followed by a division by "
     "P, both inside the timed region")
    ("transport", po::value<std::string>()->value_name("NAME")->default_value("mpi"),
     "what frugal's methods run over: mpi (Open MPI point-to-point) or ucx (UCX tagged "
     "messages; MPI only exchanges the worker addresses). The mpi baseline row is Open MPI's "
     "MPI_Allreduce either way")
    ("timeout", po::value<std::string>()->value_name("SECONDS"),
     "seconds (fractions allowed) any single wait inside a frugal collective may take before "
     "it fails with a timeout; default: FRUGAL_TIMEOUT from the environment, else 60")
    ("segment-bytes", po::value<std::string>()->value_name("BYTES"),
     "pipeline segment size of frugal's ring (K/M/G suffixes allowed); default: the "
     "library's (1M)")
    ("ranks-check",
     "before timing, run every method (MPI_Allreduce included) once at every size and "
     "compare its result element by element with the exact sum, which every rank computes "
     "on its own from all ranks' inputs (integer-valued floats, so sums are exact; like "
     "nccl-tests -c); dense:hierarchical too. Compressed methods and PowerSGD cannot be exact: "
     "their results must be identical on every rank (counted against rank 0's) and finite; "
     "gTop-k's (topk:gtopk, or topk with --topk-gtopk on) must also hold at most k non-zero "
     "elements on every rank (k = ceil(density x n); the excess counts); PowerSGD also gets a "
     "second, untimed input whose sum is a matrix of rank exactly R (each rank's a sum of R "
     "outer products of shared vectors), which a rank-R approximation reproduces: every "
     "element must be within 1e-3 x max|exact| of the exact sum. Wrong elements are counted "
     "(column wrong), reported on stderr and make the exit code 1")
    ("check", "alias of --ranks-check")
    ("json", po::value<std::string>()->value_name("FILE"),
     "also write one JSON object per table row to FILE (JSON Lines), see below")
    ("csv", po::value<std::string>()->value_name("FILE"),
     "also write the rows to FILE as CSV: a header line, then one line per row, with the "
     "JSON fields as columns in the same order (empty cell for null)")
    ("quiet,q", "no progress lines on stderr");
  // clang-format on
  return d;
}

}  // namespace

std::string_view method_field(const Method& method) noexcept {
  if (method.is_compressed()) return compression::to_string(method.compression);
  if (method.is_memcpy()) return "memcpy";
  if (method.is_powersgd()) return "powersgd";
  return method.is_mpi() ? "mpi" : "dense";
}

std::string algorithm_field(const Method& method) {
  if (method.is_memcpy()) return "memcpy";
  if (method.is_powersgd()) return "rank" + std::to_string(method.powersgd_rank);
  if (method.reduce_scatter) return "reduce_scatter";
  if (method.shard_allgather) return "shard_allgather";
  if (method.hierarchical) return "hierarchical";
  if (method.gtopk) return "gtopk";
  return std::string(method.is_mpi() ? "MPI_Allreduce" : to_string(method.algorithm));
}

ModeDefaults mode_defaults(Mode mode) noexcept {
  switch (mode) {
    case Mode::Latency:
      return {"4:64K", 1000, 100};
    case Mode::Bandwidth:
      return {"1M:128M", 20, 3};
    case Mode::All:
      break;
  }
  return {"4:128M", 100, 10};
}

Mode parse_mode(std::string_view text) {
  if (const auto mode = parse_enum<Mode>(text)) return *mode;
  throw UsageError("--mode: " + quoted(text) + " is not one of " + enum_choices<Mode>());
}

std::size_t parse_byte_count(std::string_view text, std::string_view flag) {
  const auto fail = [&](std::string_view why) {
    return UsageError(std::string(flag) + ": " + quoted(text) + " " + std::string(why));
  };
  if (text.empty()) throw fail("is empty; expected a byte count such as 4096, 64K or 128M");
  std::size_t value = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, value);
  if (ptr == text.data())
    throw fail("is not a byte count; expected digits with an optional K, M or G suffix");
  if (ec == std::errc::result_out_of_range) throw fail("is too large");
  const std::string_view suffix(ptr, static_cast<std::size_t>(end - ptr));
  unsigned shift = 0;
  if (suffix == "K" || suffix == "k") {
    shift = 10;
  } else if (suffix == "M" || suffix == "m") {
    shift = 20;
  } else if (suffix == "G" || suffix == "g") {
    shift = 30;
  } else if (!suffix.empty()) {
    throw fail("has an unknown suffix " + quoted(suffix) + "; allowed: K, M, G (powers of 1024)");
  }
  if (value > (std::numeric_limits<std::size_t>::max() >> shift)) throw fail("is too large");
  return value << shift;
}

namespace {

std::vector<std::size_t> parse_size_range(std::string_view text, std::size_t element_bytes) {
  const std::vector<std::string_view> parts = split(text, ':');
  if (parts.size() > 2)
    throw UsageError("--sizes: " + quoted(text) + " has more than one ':'; expected MIN:MAX or N");
  const std::size_t min = parse_byte_count(parts.front(), "--sizes");
  const std::size_t max = parse_byte_count(parts.back(), "--sizes");
  for (const std::size_t size : {min, max}) {
    if (size == 0)
      throw UsageError("--sizes: sizes must be at least " + std::to_string(element_bytes) +
                       " bytes (one element), got 0");
    if (size % element_bytes != 0)
      throw UsageError("--sizes: " + std::to_string(size) + " bytes is not a multiple of the " +
                       std::to_string(element_bytes) + "-byte element size");
  }
  if (min > max)
    throw UsageError("--sizes: MIN (" + std::to_string(min) + ") is larger than MAX (" +
                     std::to_string(max) + ")");
  std::vector<std::size_t> sizes;
  for (std::size_t size = min; size < max; size *= 2) {
    sizes.push_back(size);
    if (size > max / 2) break;
  }
  if (sizes.empty() || sizes.back() != max) sizes.push_back(max);
  return sizes;
}

}  // namespace

std::vector<std::size_t> parse_sizes(std::string_view text, std::size_t element_bytes) {
  std::vector<std::size_t> sizes;
  for (const std::string_view part : split(text, ',')) {
    if (part.empty()) throw UsageError("--sizes: " + quoted(text) + " has an empty entry");
    const std::vector<std::size_t> range = parse_size_range(part, element_bytes);
    sizes.insert(sizes.end(), range.begin(), range.end());
  }
  std::sort(sizes.begin(), sizes.end());
  sizes.erase(std::unique(sizes.begin(), sizes.end()), sizes.end());
  return sizes;
}

std::vector<Method> parse_methods(std::string_view text) {
  std::vector<Method> methods;
  for (const std::string_view name : split(text, ',')) {
    if (name.empty()) throw UsageError("--algorithms: " + quoted(text) + " has an empty entry");
    Method method;
    if (name == "mpi") {
      method = Method::mpi();
    } else if (name == "memcpy") {
      method = Method::memcpy();
    } else if (const auto algorithm = parse_allreduce_algorithm(name)) {
      method = Method::dense(*algorithm);
    } else {
      throw UsageError("--algorithms: unknown algorithm " + quoted(name) +
                       "; known: ring, rd, recursive_doubling, rabenseifner, auto, mpi, memcpy");
    }
    if (std::find(methods.begin(), methods.end(), method) != methods.end())
      throw UsageError("--algorithms: " + quoted(name) + " is listed twice");
    methods.push_back(method);
  }
  return methods;
}

std::string parse_transport(std::string_view text) {
  if (text == "mpi" || text == "ucx") return std::string(text);
  throw UsageError("--transport: " + quoted(text) + " is not one of mpi, ucx");
}

std::vector<Method> combine_methods(std::string_view text, const std::vector<Method>& algorithms) {
  using compression::Method;
  std::vector<bench::Method> methods;
  bool dense = false;
  for (const std::string_view entry : split(text, ',')) {
    if (entry.empty()) throw UsageError("--methods: " + quoted(text) + " has an empty entry");
    const std::size_t colon = entry.find(':');
    const std::string_view name = entry.substr(0, colon);
    const auto append = [&](const bench::Method& method) {
      if (std::find(methods.begin(), methods.end(), method) != methods.end())
        throw UsageError("--methods: " + quoted(entry) + " is listed twice");
      methods.push_back(method);
    };
    if (name == "powersgd") {
      // The rank after the colon; without one, --powersgd-rank's (resolved by the caller).
      int rank = 0;
      if (colon != std::string_view::npos) {
        const std::string_view text = entry.substr(colon + 1);
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), rank);
        if (text.empty() || ec != std::errc() || end != text.data() + text.size() || rank < 1) {
          throw UsageError("--methods: " + quoted(entry) +
                           ": powersgd takes its rank after the colon, an integer >= 1 "
                           "(powersgd:2)");
        }
      }
      append(bench::Method::powersgd(rank));
      continue;
    }
    if (colon != std::string_view::npos && entry.substr(colon + 1) == "hierarchical") {
      // Dense within each host, `name` across hosts (frugal/collectives/hierarchical.hpp).
      const std::optional<Method> m =
          name == "dense" ? std::optional<Method>(Method::None) : parse_enum<Method>(name);
      if (!m || (*m == Method::None && name != "dense")) {
        throw UsageError("--methods: " + quoted(entry) + ": hierarchical runs dense, " +
                         known_compressed_methods());
      }
      append(bench::Method::hierarchy(*m));
      continue;
    }
    if (colon != std::string_view::npos && entry.substr(colon + 1) == "gtopk") {
      if (name != "topk")
        throw UsageError("--methods: " + quoted(entry) + ": gtopk is a top-k method (topk:gtopk)");
      append(bench::Method::global_topk());
      continue;
    }
    const std::string_view half = colon == std::string_view::npos ? "" : entry.substr(colon + 1);
    if (half == "reduce_scatter" || half == "shard_allgather") {
      // The compressed reduce-scatter or allgather alone (frugal/collectives/reduce_scatter.hpp).
      const std::optional<Method> m =
          name == "dense" ? std::optional<Method>(Method::None) : parse_enum<Method>(name);
      if (!m || (*m == Method::None && name != "dense") || *m == Method::TopK) {
        throw UsageError("--methods: " + quoted(entry) + ": " + std::string(half) +
                         " runs dense, fp16, bf16, onebit, ternary, qsgd");
      }
      append(half == "reduce_scatter" ? bench::Method::halves(*m) : bench::Method::gather(*m));
      continue;
    }
    if (name == "dense") {
      if (colon != std::string_view::npos)
        throw UsageError("--methods: " + quoted(entry) +
                         ": dense takes its algorithms from --algorithms");
      if (dense) throw UsageError("--methods: \"dense\" is listed twice");
      dense = true;
      continue;
    }
    // "none" is what the other programs call the dense allreduce; here that is "dense".
    const std::optional<Method> compression = parse_enum<Method>(name);
    if (!compression || *compression == Method::None) {
      throw UsageError("--methods: unknown method " + quoted(name) + "; known: dense, " +
                       known_compressed_methods() + ", powersgd");
    }
    AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
    if (colon != std::string_view::npos) {
      const std::string_view algorithm_name = entry.substr(colon + 1);
      const auto parsed = parse_allreduce_algorithm(algorithm_name);
      if (!parsed) {
        throw UsageError("--methods: " + quoted(entry) + ": unknown algorithm " +
                         quoted(algorithm_name));
      }
      if (!algorithm_supports(*parsed, *compression)) {
        throw UsageError("--methods: " + quoted(entry) + ": " + quoted(algorithm_name) +
                         " cannot run " + quoted(name) + "; " + std::string(name) + " runs " +
                         supported_algorithms(*compression));
      }
      algorithm = *parsed;
    }
    append(bench::Method::compressed(*compression, algorithm));
  }
  std::vector<bench::Method> all;
  for (const bench::Method& m : algorithms) {
    if (m.is_mpi() || m.is_memcpy() || dense) all.push_back(m);
  }
  all.insert(all.end(), methods.begin(), methods.end());
  return all;
}

std::chrono::milliseconds parse_timeout(std::string_view text) {
  double seconds = 0;
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, seconds);
  if (text.empty() || ec != std::errc() || ptr != end || !std::isfinite(seconds) || seconds <= 0 ||
      seconds > 1e9)
    throw UsageError("--timeout: " + quoted(text) + " is not a positive number of seconds");
  return std::chrono::milliseconds(std::max<long long>(1, std::llround(seconds * 1000.0)));
}

namespace {

int scaled(int count, int floor, std::size_t bytes, const BenchOptions& options) noexcept {
  if (!options.scale_iterations || bytes < kLargeMessageBytes) return count;
  const double factor = static_cast<double>(kLargeMessageBytes) / static_cast<double>(bytes);
  const int scaled_count = static_cast<int>(static_cast<double>(count) * factor);
  return std::max(std::min(floor, count), scaled_count);
}

}  // namespace

int iterations_at(std::size_t bytes, const BenchOptions& options) noexcept {
  return scaled(options.iters, kMinLargeIterations, bytes, options);
}

int warmup_at(std::size_t bytes, const BenchOptions& options) noexcept {
  return scaled(options.warmup, 1, bytes, options);
}

namespace {

// The PowerSGD rows' rank (from --powersgd-rank when --methods did not name it) and
// --powersgd-min-compression-rate; both flags are refused without a powersgd row, like the
// other method parameters.
void resolve_powersgd(const po::variables_map& vm, BenchOptions& o) {
  const bool any = std::any_of(o.methods.begin(), o.methods.end(),
                               [](const Method& m) { return m.is_powersgd(); });
  for (const char* flag : {"powersgd-rank", "powersgd-min-compression-rate"}) {
    if (!any && !vm[flag].defaulted()) {
      throw UsageError("--" + std::string(flag) +
                       " applies to --methods powersgd only, and --methods names none of it");
    }
  }
  const int rank = vm["powersgd-rank"].as<int>();
  if (rank < 1) throw UsageError("--powersgd-rank: must be >= 1, got " + std::to_string(rank));
  o.powersgd_min_compression_rate = vm["powersgd-min-compression-rate"].as<double>();
  if (!(std::isfinite(o.powersgd_min_compression_rate) && o.powersgd_min_compression_rate >= 1)) {
    throw UsageError("--powersgd-min-compression-rate: must be finite and >= 1, got " +
                     std::to_string(o.powersgd_min_compression_rate));
  }
  for (std::size_t i = 0; i < o.methods.size(); ++i) {
    Method& m = o.methods[i];
    if (!m.is_powersgd() || m.powersgd_rank != 0) continue;
    m.powersgd_rank = rank;
    if (std::count(o.methods.begin(), o.methods.end(), m) > 1) {
      throw UsageError("--methods: powersgd and powersgd:" + std::to_string(rank) +
                       " are the same row (--powersgd-rank " + std::to_string(rank) + ")");
    }
  }
}

}  // namespace

ParseResult parse_command_line(int argc, const char* const argv[]) {
  po::options_description description = describe_options();
  po::options_description renamed;
  compression::cli::add_renamed_compression_options(renamed);
  description.add(renamed);
  po::variables_map vm;
  try {
    const auto style =
        po::command_line_style::default_style & ~po::command_line_style::allow_guessing;
    const po::positional_options_description no_positionals;
    po::store(po::command_line_parser(argc, argv)
                  .options(description)
                  .positional(no_positionals)
                  .style(style)
                  .run(),
              vm);
    po::notify(vm);
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }

  ParseResult result;
  if (vm.count("help")) {
    result.help = true;
    return result;
  }
  BenchOptions& o = result.options;

  const std::string dtype = vm["dtype"].as<std::string>();
  if (dtype != "float32")
    throw UsageError("--dtype: " + quoted(dtype) + " is not supported; only float32 is");
  o.dtype = DType::Float32;

  o.mode = parse_mode(vm["mode"].as<std::string>());
  const ModeDefaults preset = mode_defaults(o.mode);
  o.sizes = parse_sizes(vm.count("sizes") ? vm["sizes"].as<std::string>() : preset.sizes,
                        size_of(o.dtype));

  o.iters = vm.count("iters") ? vm["iters"].as<int>() : preset.iters;
  if (o.iters < 1) throw UsageError("--iters: must be at least 1, got " + std::to_string(o.iters));
  o.warmup = vm.count("warmup") ? vm["warmup"].as<int>() : preset.warmup;
  if (o.warmup < 0)
    throw UsageError("--warmup: must be at least 0, got " + std::to_string(o.warmup));
  o.scale_iterations = vm.count("no-scale") == 0;

  o.methods = combine_methods(vm["methods"].as<std::string>(),
                              parse_methods(vm["algorithms"].as<std::string>()));
  std::vector<compression::Method> compressed;
  bool powersgd = false;
  for (const Method& m : o.methods) {
    if (m.is_compressed()) compressed.push_back(m.compression);
    powersgd = powersgd || m.is_powersgd();
  }
  try {
    // --error-feedback applies to PowerSGD too, which the shared options do not know of (it is
    // no compression::Method): with a powersgd row, they see the flag as not given.
    po::variables_map scoped = vm;
    if (powersgd) {
      scoped.erase("error-feedback");
      scoped.emplace("error-feedback", po::variable_value(vm["error-feedback"].value(), true));
    }
    const compression::cli::CompressionSettings settings =
        compression::cli::compression_settings(scoped, compressed, "--methods");
    o.compression = settings.compression;
    o.error_feedback = settings.error_feedback;
  } catch (const po::error& e) {
    throw UsageError(e.what());
  }
  resolve_powersgd(vm, o);
  if (o.compression.gtopk) {
    // gTop-k cuts the sparse recursive doubling's sum; the library refuses it elsewhere.
    for (const Method& m : o.methods) {
      if (m.is_compressed() && m.compression == compression::Method::TopK &&
          (m.algorithm != AllreduceAlgorithm::Auto &&
           m.algorithm != AllreduceAlgorithm::SparseRecursiveDoubling)) {
        throw UsageError("--topk-gtopk on runs topk or topk:sparse_rd, not topk:" +
                         std::string(to_string(m.algorithm)));
      }
    }
  }
  o.seed = vm["seed"].as<std::uint64_t>();

  const std::string op = vm["op"].as<std::string>();
  if (const auto parsed = parse_enum<ReduceOp>(op)) {
    o.op = *parsed;
  } else {
    throw UsageError("--op: " + quoted(op) + " is not one of " + enum_choices<ReduceOp>());
  }

  o.transport = parse_transport(vm["transport"].as<std::string>());
  if (vm.count("timeout")) o.timeout = parse_timeout(vm["timeout"].as<std::string>());
  if (vm.count("segment-bytes")) {
    o.segment_bytes = parse_byte_count(vm["segment-bytes"].as<std::string>(), "--segment-bytes");
    if (o.segment_bytes == 0) throw UsageError("--segment-bytes: must be at least 1 byte");
  }
  o.check = vm.count("check") != 0 || vm.count("ranks-check") != 0;
  if (vm.count("json")) {
    o.json_path = vm["json"].as<std::string>();
    if (o.json_path.empty()) throw UsageError("--json: the file name is empty");
  }
  if (vm.count("csv")) {
    o.csv_path = vm["csv"].as<std::string>();
    if (o.csv_path.empty()) throw UsageError("--csv: the file name is empty");
  }
  if (!o.json_path.empty() && o.json_path == o.csv_path)
    throw UsageError("--json and --csv name the same file " + quoted(o.json_path));
  o.quiet = vm.count("quiet") != 0;
  return result;
}

std::string help_text() {
  std::ostringstream out;
  out << "Usage: mpirun -np P frugal-bench [options]\n"
         "\n"
         "Times frugal's dense and compressed allreduces (flat or hierarchical, over its MPI\n"
         "or UCX transport), its compressed reduce-scatter, PowerSGD, and Open MPI's own\n"
         "MPI_Allreduce on the same buffers, side by side in one run, in the\n"
         "manner of the OSU micro-benchmarks and nccl-tests. Only rank 0 prints. As root,\n"
         "mpirun also needs --allow-run-as-root (and --oversubscribe for more ranks than\n"
         "cores). On links shaped with tc between network namespaces: bench/cluster/run.\n"
         "\n"
      << describe_options()
      << "\n"
         "Timing:\n"
         "  For each size, every method first runs its warmup iterations, then the timed\n"
         "  iterations go round-robin across the methods (iteration i of every method before\n"
         "  iteration i+1), so that noise on a shared machine hits all methods alike. Each\n"
         "  iteration restores the buffer from a pristine copy of the input (not timed: an\n"
         "  in-place sum would otherwise grow), calls MPI_Barrier, then times the one allreduce\n"
         "  call with std::chrono::steady_clock. Each rank takes the median, p95, min and max\n"
         "  of its own iteration times; the table shows the maximum over ranks of each\n"
         "  (MPI_Reduce with MPI_MAX): the slowest rank decides when an allreduce is done.\n"
         "  Inputs are integer-valued floats in [-128, 127], different on every rank.\n"
         "\n"
         "Iterations:\n"
         "  Below 16M bytes: exactly --iters and --warmup. At S >= 16M bytes both are scaled\n"
         "  by 16M/S (halved per doubling: --iters 100 gives 100 at 16M, 50 at 32M, 25 at 64M,\n"
         "  12 at 128M), but never below 10 timed (or --iters if smaller) and 1 warmup (or\n"
         "  --warmup if 0) iterations. --no-scale turns this off.\n"
         "\n"
         "Output columns (stdout; lines starting with '#' are comments; P = number of ranks):\n"
         "  bytes        buffer size per rank in bytes (elements x 4 for float32)\n"
         "  algorithm    ring | recursive_doubling | rabenseifner | auto(<the one auto picked>)\n"
         "               | MPI_Allreduce (Open MPI's, the baseline) | memcpy | "
         "<method>/<algorithm> for\n"
         "               compressed methods: onebit/auto(two_phase) under auto, onebit/allgather\n"
         "               when named (--methods onebit:allgather); onebit/hierarchical,\n"
         "               topk/gtopk, powersgd/rank2 (powersgd/exact: the matrix was too small\n"
         "               to compress)\n"
         "  iters        timed iterations at this size\n"
         "  median_us    median latency in microseconds, max over ranks of each rank's median\n"
         "  p95_us       95th percentile latency in microseconds (nearest rank: the\n"
         "               ceil(0.95 n)-th smallest of n), max over ranks\n"
         "  min_us       fastest iteration in microseconds, max over ranks of each rank's min\n"
         "  max_us       slowest iteration in microseconds, max over ranks of each rank's max\n"
         "  algbw_GB/s   algorithm bandwidth = bytes / median time; GB = 1e9 bytes\n"
         "  busbw_GB/s   bus bandwidth = algbw x 2(P-1)/P, nccl-tests' definition for\n"
         "               allreduce: a ring allreduce sends 2(P-1)/P x bytes per rank, so busbw\n"
         "               is what each rank's link carries, comparable across P and with the\n"
         "               link's rate (for compressed methods it is dense-equivalent: the bytes\n"
         "               actually sent are wire/rank)\n"
         "  eff_GB/s     effective bandwidth = uncompressed bytes / median time (= algbw): the\n"
         "               rate a dense allreduce would need to finish as fast; compare it across\n"
         "               methods to see what compression buys\n"
         "  vs_mpi       median / MPI_Allreduce's median at the same size (below 1: faster\n"
         "               than Open MPI; the speedup over MPI_Allreduce is 1 / vs_mpi); '-' when\n"
         "               mpi is not among --algorithms\n"
         "  wire/rank    bytes a rank sends per allreduce (max over ranks), measured by frugal;\n"
         "               '-' for MPI_Allreduce. Hierarchical rows: the inter-host step only\n"
         "               (what crosses the slow links; the dense steps within a host are not\n"
         "               counted). PowerSGD: its P and Q allreduces and its agreement. '-' for\n"
         "               the dense reduce_scatter and shard_allgather (they count no bytes)\n"
         "  ratio        compression ratio: the bytes a dense ring sends per rank,\n"
         "               2(P-1)/P x bytes, divided by wire/rank; '-' for reduce_scatter,\n"
         "               shard_allgather and hierarchical rows (their wire/rank is not an\n"
         "               allreduce's over P ranks)\n"
         "  rel_err      ||result - exact sum|| / ||exact sum|| of the first (untimed) call,\n"
         "               the exact sum computed locally from all ranks' inputs; 0 for correct\n"
         "               dense results\n"
         "  check        with --ranks-check: ok or WRONG; '-' without it\n"
         "  wrong        with --ranks-check: elements that were wrong, summed over ranks (dense\n"
         "               and mpi: differing from the exact sum; compressed and PowerSGD:\n"
         "               differing from rank 0's result, plus gTop-k's non-zeros beyond k and\n"
         "               PowerSGD's misses on the rank-R input); '-' without it\n"
         "\n"
         "JSON rows (--json FILE, JSON Lines: one object per table row, written by rank 0) and\n"
         "CSV columns (--csv FILE, same names and order):\n"
         "  method       \"dense\" (frugal's dense allreduce) | \"mpi\" (MPI_Allreduce) | \"fp16\" "
         "|\n"
         "               \"bf16\" | \"topk\" | \"onebit\" | \"ternary\" | \"qsgd\" | \"powersgd\"\n"
         "  algorithm    as asked, without the auto choice: \"ring\", \"recursive_doubling\",\n"
         "               \"rabenseifner\", \"two_phase\", \"allgather\", \"sparse_allgather\",\n"
         "               \"sparse_rd\", \"auto\", \"reduce_scatter\", \"shard_allgather\",\n"
         "               \"hierarchical\", \"gtopk\", \"rank<R>\" (PowerSGD), \"MPI_Allreduce\"\n"
         "  selected     the algorithm that ran (what auto picked; otherwise = algorithm;\n"
         "               \"sparse_rd\" for gtopk; \"exact\" for PowerSGD on a matrix too small\n"
         "               to compress; hierarchical: the inter-host step's algorithm)\n"
         "  transport    \"mpi\" (frugal over Open MPI point-to-point) | \"ucx\" (frugal over\n"
         "               UCX, --transport ucx); always \"mpi\" on the MPI_Allreduce rows\n"
         "  ranks, bytes, dtype (\"float32\"), op (\"sum\" | \"average\"), iters, warmup,\n"
         "  median_us, p95_us, min_us, max_us, algbw_gbps, busbw_gbps, vs_mpi (number or\n"
         "  null), check (\"ok\" | \"wrong\" | \"off\"), wrong (number or null),\n"
         "  wire_bytes_per_rank, compression_ratio (as in the table; null for mpi),\n"
         "  effective_gbps (eff_GB/s), rel_error,\n"
         "  encode_us, comm_us, decode_us (frugal's own breakdown of one allreduce: encoding\n"
         "  with error feedback, waiting for messages, decoding and reducing; medians over the\n"
         "  timed iterations, max over ranks; dense algorithms count everything as comm;\n"
         "  null for mpi and PowerSGD, which does not time its parts)\n"
         "\n"
         "Exit codes: 0 success; 1 a runtime error (printed with the failing rank) or, with\n"
         "--ranks-check, a wrong result; 2 bad command line (the message names the problem).\n"
         "\n"
         "Example:\n"
         "  mpirun -np 2 build/bench/frugal-bench --mode bandwidth --ranks-check --json out.jsonl\n"
         "  mpirun -np 4 build/bench/frugal-bench --sizes 1M,102400000 --methods "
         "dense,fp16,topk,onebit,qsgd --csv out.csv\n"
         "  mpirun -np 4 build/bench/frugal-bench --sizes 1M --methods "
         "topk:sparse_rd,topk:gtopk,powersgd:1,powersgd:4 --ranks-check\n"
         "  mpirun -np 2 env FRUGAL_HOST_ID=a build/bench/frugal-bench --methods "
         "dense:hierarchical,onebit:hierarchical : \\\n"
         "         -np 2 env FRUGAL_HOST_ID=b build/bench/frugal-bench --methods "
         "dense:hierarchical,onebit:hierarchical   (2 hosts x 2 ranks)\n"
         "  bench/plot out.jsonl plots/    (PNG plots with gnuplot)\n";
  return out.str();
}

}  // namespace frugal::bench
