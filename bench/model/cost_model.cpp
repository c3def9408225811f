#include "cost_model.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <string>

#include "frugal/compression/payload.hpp"
#include "frugal/compression/topk_indices.hpp"
#include "frugal/error.hpp"

namespace frugal::model {

namespace {

using compression::Method;

constexpr double kFloatBytes = 4;
// SparseVector's wire head (form and entry count) ahead of its sparse or dense values.
constexpr double kSparseHead = 16;

// What one call costs, accumulated round by round.
class Cost {
 public:
  Cost(const Scenario& s, const Calibration& c)
      : stretch_(s.cores == 0 ? 1.0 : std::max(1.0, static_cast<double>(s.ranks) / s.cores)),
        latency_(s.link.latency_seconds + c.message_seconds * stretch_),
        post_(c.post_seconds * stretch_),
        payload_rate_(s.link.bytes_per_second * s.link.payload_share),
        duplex_rate_(payload_rate_ * s.link.efficiency),
        stack_(c.stack_seconds_per_byte * stretch_) {}

  // One round of messages: this rank sends `out` bytes and receives `in` bytes (to and from any
  // number of peers at once), and the busiest connection to one peer carries `both_ways` bytes
  // in each direction at once (0 when no connection carries data both ways). The link carries
  // each direction at its rate; a connection busy both ways reaches only the link's efficiency
  // share of it; the TCP stack's CPU handles both directions and can be the slowest of the three.
  // A round with `peers` peers posts that many sends and receives: each beyond the first costs
  // the calibrated per-message CPU time.
  void round(double out, double in, double both_ways, int peers = 1) {
    ++p_.rounds;
    p_.latency_seconds += latency_ + std::max(0, peers - 1) * post_;
    p_.wire_seconds += std::max(
        {std::max(out, in) / payload_rate_, both_ways / duplex_rate_, (out + in) * stack_});
    p_.wire_bytes += out;
  }
  // `seconds` of one core's computation, on a core shared with other ranks.
  void compute(double seconds) { p_.compute_seconds += seconds * stretch_; }

  Prediction result() const {
    Prediction p = p_;
    p.seconds = p.compute_seconds + p.wire_seconds + p.latency_seconds;
    return p;
  }

 private:
  double stretch_;
  double latency_;
  double post_;
  double payload_rate_;
  double duplex_rate_;
  double stack_;
  Prediction p_;
};

struct Fold {
  int pof2 = 1;        // the largest power of two <= P
  bool extra = false;  // P is not a power of two: ranks beyond pof2 fold in and out
  int steps = 0;       // log2(pof2)
};

Fold fold_of(int ranks) {
  Fold f;
  f.pof2 = static_cast<int>(std::bit_floor(static_cast<unsigned>(ranks)));
  f.extra = f.pof2 != ranks;
  f.steps = std::countr_zero(static_cast<unsigned>(f.pof2));
  return f;
}

// The agreement every frugal call makes first: a small block by recursive doubling (with the
// fold of non-powers of two). Its bytes are negligible; its rounds are not.
void agreement(Cost& cost, int ranks) {
  if (ranks <= 1) return;
  const Fold f = fold_of(ranks);
  for (int i = 0; i < f.steps + (f.extra ? 2 : 0); ++i) cost.round(0, 0, 0);
}

// The fold of a non-power of two: the busiest rank (a proxy) receives a whole buffer before the
// exchanges and sends it back after them.
void fold_rounds(Cost& cost, const Fold& f, double bytes, const Kernels& c, double n) {
  if (!f.extra) return;
  cost.round(0, bytes, 0);
  cost.compute(n * c.reduce);
  cost.round(bytes, 0, 0);
}

void dense(Cost& cost, AllreduceAlgorithm algorithm, double n, int ranks, const Kernels& c) {
  const double m = n * kFloatBytes;
  const double p = ranks;
  if (ranks <= 1) return;
  const Fold f = fold_of(ranks);
  switch (algorithm) {
    case AllreduceAlgorithm::Ring:
      // Reduce-scatter then allgather, P−1 steps each of one block of m/P, sent to the next
      // rank and received from the previous one: the same peer (one connection both ways)
      // only at P = 2.
      for (int i = 0; i < 2 * (ranks - 1); ++i) cost.round(m / p, m / p, ranks == 2 ? m / p : 0);
      cost.compute((p - 1) * (n / p) * c.reduce);
      return;
    case AllreduceAlgorithm::RecursiveDoubling:
      fold_rounds(cost, f, m, c, n);
      for (int i = 0; i < f.steps; ++i) cost.round(m, m, m);  // pairwise exchanges
      cost.compute(f.steps * n * c.reduce);
      return;
    case AllreduceAlgorithm::Rabenseifner: {
      fold_rounds(cost, f, m, c, n);
      // Recursive halving sends m/2, m/4, ...; the allgather retraces it.
      double half = m / 2;
      for (int i = 0; i < f.steps; ++i, half /= 2) cost.round(half, half, half);
      half = m / f.pof2;
      for (int i = 0; i < f.steps; ++i, half *= 2) cost.round(half, half, half);
      cost.compute(n * (f.pof2 - 1) / f.pof2 * c.reduce);
      return;
    }
    default:
      throw Error(ErrorCode::InvalidArgument, "method: dense allreduce has no algorithm '" +
                                                  std::string(to_string(algorithm)) + "'");
  }
}

// Payload bytes of `count` elements: exact where the method fixes it; top-k's coded indices as
// expected for uniformly spread positions; else the largest.
double payload_bytes(const compression::Compressor& compressor, std::size_t count) {
  if (compressor.method() == Method::TopK) {
    const auto k = static_cast<double>(compressor.k_for(count));
    const double values = compressor.config().values == compression::TopKValues::Fp16 ? 2 : 4;
    return static_cast<double>(compression::PayloadHeader::kSize) + k * values +
           compression::expected_topk_index_bytes(count, k);
  }
  return static_cast<double>(
      compressor.encoded_bytes(count).value_or(compressor.max_encoded_bytes(count)));
}

// Chunk i of P in a balanced split of n (the first n mod P chunks one element longer).
std::size_t chunk_count(std::size_t n, int ranks, int i) {
  const auto p = static_cast<std::size_t>(ranks);
  return n / p + (static_cast<std::size_t>(i) < n % p ? 1 : 0);
}

void two_phase(Cost& cost, const compression::Compressor& compressor, std::size_t n, int ranks,
               const MethodKernels& k) {
  // Rank 0 owns the largest chunk: it is the busiest rank.
  double others = 0;
  for (int c = 1; c < ranks; ++c) others += payload_bytes(compressor, chunk_count(n, ranks, c));
  const double own = payload_bytes(compressor, chunk_count(n, ranks, 0));
  const double mine = static_cast<double>(chunk_count(n, ranks, 0));
  const double p = ranks;
  cost.compute(static_cast<double>(n) * k.encode_payload);  // worker encode, every chunk
  cost.round(others, (p - 1) * own, own, ranks - 1);        // chunk c to its owner c
  cost.compute(mine * (k.decode_sum_base + p * k.decode_sum_payload));  // the owner's sum
  cost.compute(mine * k.encode_payload);                                // server re-encode
  cost.round((p - 1) * own, others, own, ranks - 1);                    // to everyone
  cost.compute(static_cast<double>(n) * k.decode);                      // every chunk
}

void allgather(Cost& cost, const compression::Compressor& compressor, std::size_t n, int ranks,
               const MethodKernels& k, const Kernels& c) {
  const double payload = payload_bytes(compressor, n);
  const double p = ranks;
  const double elements = static_cast<double>(n);
  cost.compute(elements * k.encode_apply);
  cost.round((p - 1) * payload, (p - 1) * payload, payload, ranks - 1);
  cost.compute(elements * c.fill);
  if (compressor.method() == Method::TopK) {
    cost.compute(p * static_cast<double>(compressor.k_for(n)) * k.decode_add);
  } else {
    cost.compute(p * elements * k.decode_add);
  }
}

void sparse_recursive_doubling(Cost& cost, const compression::Compressor& compressor, std::size_t n,
                               int ranks, const MethodKernels& k, const Kernels& c) {
  const double elements = static_cast<double>(n);
  const double dense_bytes = kSparseHead + elements * kFloatBytes;
  cost.compute(elements * k.encode_apply);
  // Worst case for the merge: the ranks' selections do not overlap, so the vector doubles each
  // step until it passes half density (SparseVector's switch to dense). Sparse, it sends 4-byte
  // values and the coded indices.
  double entries = static_cast<double>(compressor.k_for(n));
  bool is_dense = entries * 8 > elements * kFloatBytes;
  auto bytes = [&] {
    return is_dense ? dense_bytes
                    : kSparseHead + entries * kFloatBytes +
                          compression::expected_topk_index_bytes(n, entries);
  };
  auto merge = [&] {
    cost.compute(is_dense ? elements * c.reduce : 2 * entries * c.sparse_merge);
    entries = std::min(2 * entries, elements);
    if (entries * 8 > elements * kFloatBytes) is_dense = true;
  };
  // Every receive goes into a new buffer of the dense size (allocated and zeroed).
  const Fold f = fold_of(ranks);
  if (f.extra) {
    cost.round(0, bytes(), 0);
    cost.compute(elements * c.fresh);
    merge();
  }
  for (int i = 0; i < f.steps; ++i) {
    cost.round(bytes(), bytes(), bytes());
    cost.compute(elements * c.fresh);
    merge();
  }
  if (f.extra) cost.round(bytes(), 0, 0);
  cost.compute(elements * c.fill);  // scatter_to the output
}

void require_scenario(const Scenario& s) {
  require(s.ranks >= 1, "ranks", "must be at least 1");
  require(s.elements >= 1, "elements", "must be at least 1");
  require(s.cores >= 0, "cores", "must be >= 0 (0: one core per rank)");
  require(std::isfinite(s.link.bytes_per_second) && s.link.bytes_per_second > 0, "rate",
          "must be a positive link rate");
  require(std::isfinite(s.link.latency_seconds) && s.link.latency_seconds >= 0, "latency",
          "must be >= 0");
  require(s.link.efficiency > 0 && s.link.efficiency <= 1, "efficiency", "must be in (0, 1]");
}

}  // namespace

double ring_wire_bytes(double bytes, int ranks) {
  require(ranks >= 1, "ranks", "must be at least 1");
  return 2.0 * bytes * (ranks - 1) / ranks;
}

AllreduceAlgorithm resolved_algorithm(const bench::Method& method,
                                      const compression::CompressionConfig& config,
                                      std::size_t elements, int ranks) {
  if (method.algorithm != AllreduceAlgorithm::Auto || method.is_mpi()) return method.algorithm;
  if (!method.is_compressed()) {
    return choose_allreduce_algorithm(elements * sizeof(float), ranks);
  }
  AllreduceOptions options;
  options.compression = config;
  options.compression.method = method.compression;
  return choose_allreduce_algorithm(options, elements, ranks);
}

std::string method_label(const bench::Method& method, const compression::CompressionConfig& config,
                         std::size_t elements, int ranks) {
  if (method.is_mpi()) return "mpi";
  const std::string algorithm(to_string(resolved_algorithm(method, config, elements, ranks)));
  return std::string(bench::method_field(method)) + "/" + algorithm;
}

Prediction predict(const bench::Method& method, const compression::CompressionConfig& config,
                   const Scenario& scenario, const Calibration& calibration) {
  require_scenario(scenario);
  require(!method.is_memcpy(), "method",
          "memcpy is not an allreduce; the model has no form for it");
  const std::size_t n = scenario.elements;
  const int ranks = scenario.ranks;
  const Kernels kernels = calibration.at(static_cast<double>(n));
  if (method.is_mpi()) {
    // Open MPI's tuned allreduce: the faster of the pairwise-exchange shapes (recursive doubling,
    // recursive halving and doubling), without frugal's agreement. Its ring would be faster on
    // these links at P >= 4; the measurements say it does not run it here.
    Prediction best;
    bool first = true;
    for (const AllreduceAlgorithm a :
         {AllreduceAlgorithm::RecursiveDoubling, AllreduceAlgorithm::Rabenseifner}) {
      Cost cost(scenario, calibration);
      dense(cost, a, static_cast<double>(n), ranks, kernels);
      const Prediction p = cost.result();
      if (first || p.seconds < best.seconds) best = p;
      first = false;
    }
    return best;
  }
  const AllreduceAlgorithm algorithm = resolved_algorithm(method, config, n, ranks);
  Cost cost(scenario, calibration);
  agreement(cost, ranks);
  if (!method.is_compressed()) {
    dense(cost, algorithm, static_cast<double>(n), ranks, kernels);
    return cost.result();
  }
  if (!algorithm_supports(algorithm, method.compression)) {
    throw Error(ErrorCode::InvalidArgument,
                "method: " + std::string(compression::to_string(method.compression)) +
                    " cannot run '" + std::string(to_string(algorithm)) + "' (it runs " +
                    supported_algorithms(method.compression) + ")");
  }
  const MethodKernels& mk = kernels.kernels(method.compression);
  compression::CompressionConfig c = config;
  c.method = method.compression;
  const auto compressor = compression::make_compressor(c);
  cost.compute(static_cast<double>(n) * kernels.scan);
  switch (algorithm) {
    case AllreduceAlgorithm::TwoPhase:
      two_phase(cost, *compressor, n, ranks, mk);
      break;
    case AllreduceAlgorithm::SparseRecursiveDoubling:
      sparse_recursive_doubling(cost, *compressor, n, ranks, mk, kernels);
      break;
    default:  // Allgather, SparseAllgather
      allgather(cost, *compressor, n, ranks, mk, kernels);
      break;
  }
  return cost.result();
}

}  // namespace frugal::model
