// frugal-soak: a long run of allreduces of random sizes and methods with every result checked,
// and the resident memory watched (issue 8). See --help.
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "compressed_reference.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"
#include "frugal/mpi.hpp"
#ifdef FRUGAL_HAVE_UCX
#include "frugal/ucx.hpp"
#include "frugal/ucx_mpi.hpp"
#endif

namespace {

using frugal::AllreduceAlgorithm;
using frugal::compression::Method;

constexpr const char* kHelp = R"(Usage: mpirun -np P frugal-soak [options]

Runs N allreduces of random sizes (log-uniform in [0, --max-count] floats) with random methods
and algorithms (dense ring / recursive doubling / Rabenseifner / auto, fp16, bf16, top-k, 1-bit,
ternary, QSGD), all drawn from --seed so every rank makes the same choices, and checks every
result on every rank:
  dense      exact: inputs are small integers, so every summation order gives the exact sum;
  compressed bit-identical to frugal's serial model of the compressed allreduce (the same
             compressors, chunking, random streams and error feedback, computed locally from
             every rank's input, which each rank can regenerate), and bit-identical across ranks
             (a hash of the result, gathered with MPI).
Each compressed call uses a fresh AllreduceState (error feedback on), so the model starts fresh.
Calls 0-9 run every method once at --max-count, so that per-thread scratch buffers and the
allocator's pools reach their steady size early. Resident memory (VmRSS) is read after the first
call, after the warm-up (the first 10%, at least those 10 calls) and at the end; the peak is VmHWM.

Options:
  --iters N            allreduces (default 10000)
  --seed S             seed of the random choices (default 1)
  --max-count N        largest buffer in floats (default 65536)
  --transport mpi|ucx  frugal's transport (default mpi; ucx: UCX data, MPI bootstrap)
  --rss-growth-mib M   fail if any rank's RSS grew more than M MiB from warm-up to the end
                       (default 16)
  --help               this text
Exit status: 0 all results right and RSS within bounds, 1 a wrong result, an error or RSS
growth, 2 bad usage.
)";

// Under AddressSanitizer RSS mostly measures its quarantine of freed memory (hundreds of MiB),
// so the growth check is reported but not enforced there.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kRssMeaningful = false;
#else
constexpr bool kRssMeaningful = true;
#endif

struct Options {
  long iters = 10000;
  std::uint64_t seed = 1;
  std::size_t max_count = 65536;
  std::string transport = "mpi";
  double rss_growth_mib = 16;
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "frugal-soak: %s (see --help)\n", message.c_str());
  std::exit(2);
}

long parse_long(const std::string& flag, const char* text, long min) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text, &end, 10);
  if (end == text || *end != '\0' || errno != 0 || v < min) {
    usage_error(flag + " expects an integer >= " + std::to_string(min) + ", got '" + text + "'");
  }
  return v;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(kHelp, stdout);
      std::exit(0);
    }
    if (i + 1 >= argc) usage_error("unknown option or missing value: '" + a + "'");
    const char* v = argv[++i];
    if (a == "--iters") {
      o.iters = parse_long(a, v, 1);
    } else if (a == "--seed") {
      o.seed = static_cast<std::uint64_t>(parse_long(a, v, 0));
    } else if (a == "--max-count") {
      o.max_count = static_cast<std::size_t>(parse_long(a, v, 1));
    } else if (a == "--transport") {
      o.transport = v;
      if (o.transport != "mpi" && o.transport != "ucx") {
        usage_error("--transport expects mpi or ucx, got '" + o.transport + "'");
      }
    } else if (a == "--rss-growth-mib") {
      o.rss_growth_mib = static_cast<double>(parse_long(a, v, 0));
    } else {
      usage_error("unknown option '" + a + "'");
    }
  }
  return o;
}

// kB from /proc/self/status ("VmRSS:", "VmHWM:").
long status_kb(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field, 0) == 0)
      return std::strtol(line.c_str() + std::strlen(field), nullptr, 10);
  }
  return -1;
}

// Rank r's input for call i: small integers, so dense sums are exact in any order and the
// compressors see a spread of magnitudes (and ties, which top-k breaks towards lower indices).
std::vector<float> input(long i, int rank, std::size_t n) {
  std::vector<float> x(n);
  const auto salt = static_cast<std::size_t>(i * 31 + rank * 17);
  for (std::size_t j = 0; j < n; ++j)
    x[j] = static_cast<float>(static_cast<int>((salt + j * 7) % 9) - 4);
  return x;
}

struct Choice {
  Method method = Method::None;
  AllreduceAlgorithm algorithm = AllreduceAlgorithm::Auto;
  std::size_t count = 0;
  frugal::AllreduceOptions options;
  std::string name;
};

// Calls 0..9 run every method once at the largest size, so that the scratch buffers and the
// allocator's pools reach their steady size during the warm-up, not in the middle of the run.
constexpr int kMethods = 10;

Choice choose(std::mt19937_64& rng, std::size_t max_count, long call) {
  Choice c;
  // Log-uniform sizes: small and large buffers alike, and 0 now and then.
  std::uniform_real_distribution<double> log_size(0.0,
                                                  std::log2(static_cast<double>(max_count) + 1));
  c.count = static_cast<std::size_t>(std::exp2(log_size(rng))) - 1;
  int pick = static_cast<int>(rng() % kMethods);
  if (call < kMethods) {
    pick = static_cast<int>(call);
    c.count = max_count;
  }
  static constexpr AllreduceAlgorithm kDense[] = {
      AllreduceAlgorithm::Auto, AllreduceAlgorithm::Ring, AllreduceAlgorithm::RecursiveDoubling,
      AllreduceAlgorithm::Rabenseifner};
  frugal::compression::CompressionConfig& cc = c.options.compression;
  switch (pick) {
    case 0:
    case 1:
    case 2:
    case 3:
      c.algorithm = kDense[pick];
      c.name = "dense/" + std::string(frugal::to_string(c.algorithm));
      c.options.algorithm = c.algorithm;
      return c;
    case 4:
      cc.method = Method::Fp16;
      break;
    case 5:
      cc.method = Method::Bf16;
      cc.stochastic_rounding = (rng() & 1) != 0;
      break;
    case 6:
      cc.method = Method::TopK;
      cc.density = std::array{0.01, 0.1, 0.5, 1.0}[rng() % 4];
      cc.values = (rng() & 1) != 0 ? frugal::compression::TopKValues::Fp16
                                   : frugal::compression::TopKValues::Fp32;
      break;
    case 7:
      cc.method = Method::OneBit;
      cc.scaling = (rng() & 1) != 0 ? frugal::compression::OneBitScaling::SignMeans
                                    : frugal::compression::OneBitScaling::MeanAbs;
      break;
    case 8:
      cc.method = Method::Ternary;
      break;
    default:
      cc.method = Method::Qsgd;
      cc.bits = std::array{2, 4, 8}[rng() % 3];
      break;
  }
  c.method = cc.method;
  c.options.seed = rng();
  c.name = std::string(frugal::compression::to_string(cc.method));
  return c;
}

std::uint64_t fnv(const std::vector<float>& v) {
  std::uint64_t h = 1469598103934665603ULL;
  const auto* b = reinterpret_cast<const unsigned char*>(v.data());
  for (std::size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ULL;
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  std::unique_ptr<frugal::Communicator> comm;
  try {
    if (o.transport == "ucx") {
#ifdef FRUGAL_HAVE_UCX
      comm = frugal::make_ucx_communicator(MPI_COMM_WORLD);
#else
      usage_error("--transport ucx: this build has no UCX");
#endif
    } else {
      comm = frugal::make_mpi_communicator(MPI_COMM_WORLD);
    }
  } catch (const frugal::Error& e) {
    std::fprintf(stderr, "frugal-soak: %s\n", e.what());
    return 1;
  }
  const int rank = comm->rank();
  const int size = comm->size();
  std::mt19937_64 rng(o.seed);
  long wrong = 0;
  long rss_first = 0, rss_warm = 0;
  const long warm_at = std::max(static_cast<long>(kMethods), o.iters / 10);
  std::vector<long> per_method(10, 0);
  const auto start = std::chrono::steady_clock::now();
  try {
    for (long i = 0; i < o.iters; ++i) {
      Choice c = choose(rng, o.max_count, i);
      std::vector<float> data = input(i, rank, c.count);
      std::vector<float> expect;
      frugal::AllreduceState state;
      if (c.method == Method::None) {
        expect.assign(c.count, 0.0f);
        for (int r = 0; r < size; ++r) {
          const std::vector<float> x = input(i, r, c.count);
          for (std::size_t j = 0; j < c.count; ++j) expect[j] += x[j];
        }
      } else {
        c.options.state = &state;
        const AllreduceAlgorithm algorithm =
            frugal::choose_allreduce_algorithm(c.options, c.count, size);
        frugal::testing::CompressedReference model(size, c.count, c.options, algorithm);
        std::vector<std::vector<float>> inputs;
        for (int r = 0; r < size; ++r) inputs.push_back(input(i, r, c.count));
        expect = model.step(inputs);
      }
      frugal::allreduce(*comm, std::span<float>(data), c.options);
      bool ok = data.size() == expect.size() &&
                (data.empty() ||
                 std::memcmp(data.data(), expect.data(), data.size() * sizeof(float)) == 0);
      // Cross-rank identity, over MPI itself (not the transport under test).
      std::uint64_t h = fnv(data);
      std::vector<std::uint64_t> all(static_cast<std::size_t>(size));
      MPI_Allgather(&h, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD);
      ok = ok && std::all_of(all.begin(), all.end(), [&](std::uint64_t v) { return v == h; });
      if (!ok) {
        ++wrong;
        if (wrong <= 5) {
          std::fprintf(stderr, "frugal-soak: rank %d: call %ld (%s, %zu floats): WRONG RESULT\n",
                       rank, i, c.name.c_str(), c.count);
        }
      }
      if (i == 0) rss_first = status_kb("VmRSS:");
      if (i == warm_at - 1) rss_warm = status_kb("VmRSS:");
    }
  } catch (const frugal::Error& e) {
    std::fprintf(stderr, "frugal-soak: rank %d: %s\n", rank, e.what());
    return 1;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const long rss_end = status_kb("VmRSS:");
  const long rss_peak = status_kb("VmHWM:");
  long mine[5] = {wrong, rss_first, rss_warm, rss_end, rss_peak};
  std::vector<long> all(static_cast<std::size_t>(5 * size));
  MPI_Gather(mine, 5, MPI_LONG, all.data(), 5, MPI_LONG, 0, MPI_COMM_WORLD);
  int status = 0;
  if (rank == 0) {
    std::printf(
        "frugal-soak: %d ranks, transport %s, %ld allreduces (seed %llu, max %zu floats) "
        "in %.1f s\n",
        size, o.transport.c_str(), o.iters, static_cast<unsigned long long>(o.seed), o.max_count,
        seconds);
    long total_wrong = 0;
    for (int r = 0; r < size; ++r) {
      const long* v = &all[static_cast<std::size_t>(5 * r)];
      const double growth = static_cast<double>(v[3] - v[2]) / 1024.0;
      std::printf(
          "  rank %d: wrong %ld; RSS first %.1f MiB, after warm-up %.1f MiB, end %.1f MiB "
          "(growth %+.1f MiB), peak %.1f MiB\n",
          r, v[0], v[1] / 1024.0, v[2] / 1024.0, v[3] / 1024.0, growth, v[4] / 1024.0);
      total_wrong += v[0];
      if (growth > o.rss_growth_mib && kRssMeaningful) {
        std::printf("  rank %d: RSS grew %.1f MiB > %.1f MiB allowed\n", r, growth,
                    o.rss_growth_mib);
        status = 1;
      }
    }
    if (!kRssMeaningful) std::printf("  (AddressSanitizer build: RSS growth not checked)\n");
    if (total_wrong > 0) status = 1;
    std::printf("frugal-soak: %s\n", status == 0 ? "PASS" : "FAIL");
  }
  MPI_Bcast(&status, 1, MPI_INT, 0, MPI_COMM_WORLD);
  comm.reset();
  return status;
}
