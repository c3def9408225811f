// compressed_reduce_scatter and compressed_allgather: the two phases of the two-phase allreduce
// (compressed_phases.cpp) behind the public checks, the state binding and the agreement.
#include <chrono>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "agreement.hpp"
#include "allreduce_plan.hpp"
#include "compressed_phases.hpp"
#include "frugal/collectives/collectives.hpp"
#include "frugal/collectives/reduce_scatter.hpp"
#include "lazy_require.hpp"
#include "refusal.hpp"
#include "state_binding.hpp"

namespace frugal {

ShardRange reduce_scatter_shard(std::size_t count, int ranks, int rank) {
  require(ranks >= 1, "ranks", [&] { return "must be >= 1, got " + std::to_string(ranks); });
  require(rank >= 0 && rank < ranks, "rank", [&] {
    return "must be in [0, " + std::to_string(ranks) + "), got " + std::to_string(rank);
  });
  const patterns::Range r = patterns::chunk_range(count, ranks, rank);
  return {r.offset, r.count};
}

namespace {

using detail::CollectiveKind;

// Which half is running, for the checks and the messages.
struct Half {
  CollectiveKind kind;
  const char* name;
};
constexpr Half kReduceScatter{CollectiveKind::ReduceScatter, "compressed_reduce_scatter"};
constexpr Half kAllgather{CollectiveKind::Allgather, "compressed_allgather"};

// What a peer with good arguments puts in its agreement block for `count` elements: a
// refusing rank takes part in that agreement (refusal.hpp).
detail::AgreementTerms peer_terms(Half half, std::size_t count, const AllreduceOptions& options) {
  detail::AgreementTerms terms;
  const bool scatter = half.kind == CollectiveKind::ReduceScatter;
  if (options.compression.method == compression::Method::None) {
    // The dense halves are reduce_scatter and allgatherv (collectives.hpp).
    terms.kind = scatter ? CollectiveKind::ReduceScatter : CollectiveKind::Allgatherv;
    terms.count = scatter ? count : count * sizeof(float);
    if (scatter) {
      terms.dtype = DType::Float32;
      terms.op = options.op;
    }
    return terms;
  }
  terms.kind = half.kind;
  terms.count = count;
  terms.dtype = DType::Float32;
  terms.op = scatter ? options.op : ReduceOp::Sum;
  terms.algorithm = AllreduceAlgorithm::TwoPhase;
  terms.action = options.non_finite;
  return terms;
}

// Runs `checks`; what they throw (InvalidArgument, or Mismatch for a state bound elsewhere) is
// refused on every rank.
template <typename Checks>
void checked(Communicator& comm, const AllreduceOptions& options, Half half, std::size_t count,
             Checks&& checks) {
  detail::refusing(comm, options, peer_terms(half, count, options), checks);
}

// The options checked and planned for one half: the algorithm resolved to two-phase, top-k
// refused, the plan of the matching allreduce with its terms turned into this half's.
struct HalfPlan {
  AllreduceOptions options;
  detail::AllreducePlan plan;
};

HalfPlan plan_half(const Communicator& comm, std::size_t count, const AllreduceOptions& options,
                   Half half) {
  const compression::Method method = options.compression.method;
  const bool dense = method == compression::Method::None;
  require(method != compression::Method::TopK, "compression.method", [&] {
    return std::string(half.name) +
           " runs the quantizers (fp16, bf16, onebit, ternary, qsgd) and dense (none); top-k's "
           "sparse payloads have no two-phase form";
  });
  const AllreduceAlgorithm a = options.algorithm;
  require(a == AllreduceAlgorithm::Auto ||
              a == (dense ? AllreduceAlgorithm::Ring : AllreduceAlgorithm::TwoPhase),
          "algorithm", [&] {
            return std::string(half.name) + " runs " + (dense ? "ring" : "two_phase") +
                   " (or auto), not " + std::string(to_string(a));
          });
  if (dense) {
    const NonFiniteAction n = options.non_finite;
    require(n == NonFiniteAction::Default ||
                (n == NonFiniteAction::Zero && half.kind == CollectiveKind::ReduceScatter),
            "non_finite", [&] {
              return std::string(half.name) + " dense does not scan for NaN/Inf: use default" +
                     (half.kind == CollectiveKind::ReduceScatter ? " or zero" : "");
            });
  } else {
    require(
        options.non_finite != NonFiniteAction::Zero || half.kind == CollectiveKind::ReduceScatter,
        "non_finite", "zero would write to the shard, which compressed_allgather only reads");
  }
  HalfPlan h{options, {}};
  h.options.algorithm = dense ? AllreduceAlgorithm::Ring : AllreduceAlgorithm::TwoPhase;
  // The gather adds nothing up: its op is not part of what ranks agree on or of its state.
  if (half.kind == CollectiveKind::Allgather) h.options.op = ReduceOp::Sum;
  h.plan = detail::plan_allreduce(comm, count * sizeof(float), DType::Float32, h.options);
  h.plan.terms.kind = half.kind;
  return h;
}

// Binds the state of a compressed half: the reduce-scatter keeps the worker residual (the
// whole buffer), the allgather the shard's (the two-phase server residual). Returns the
// residual (null without error feedback) and the step that keys the random streams.
std::pair<compression::ErrorFeedback*, std::uint64_t> bind_half(Communicator& comm,
                                                                std::size_t count,
                                                                const HalfPlan& h, Half half) {
  const AllreduceOptions& options = h.options;
  if (options.state == nullptr) return {nullptr, comm.sequence()};
  const bool scatter = half.kind == CollectiveKind::ReduceScatter;
  const std::size_t shard = patterns::chunk_range(count, comm.size(), comm.rank()).count;
  AllreduceState::Layout layout;
  layout.count = count;
  layout.ranks = comm.size();
  layout.rank = comm.rank();
  layout.method = static_cast<std::uint8_t>(options.compression.method);
  layout.feedback = options.error_feedback ? 1 : 0;
  layout.op = static_cast<std::uint8_t>(options.op);
  layout.k = h.plan.compressor->k_for(count);
  layout.segments = detail::segments_digest(options.segments);
  layout.gtopk = options.compression.gtopk ? 1 : 0;
  const std::size_t worker = options.error_feedback && scatter ? count : 0;
  const std::size_t server = options.error_feedback && !scatter ? shard : 0;
  detail::StateBinding::bind(*options.state, layout, worker, server);
  compression::ErrorFeedback* w = detail::StateBinding::worker(*options.state);
  compression::ErrorFeedback* s = detail::StateBinding::server(*options.state);
  // The layout does not say which collective bound it; the residuals do.
  if ((w != nullptr) != (worker > 0) || (s != nullptr) != (server > 0)) {
    throw Error(ErrorCode::Mismatch,
                "AllreduceState was used with another collective (allreduce, reduce-scatter or "
                "allgather); now " +
                    std::string(half.name) +
                    " (one state per buffer and collective; reset() to reuse)");
  }
  return {scatter ? w : s, options.state->steps()};
}

void dense_reduce_scatter(Communicator& comm, std::span<float> input, std::span<float> output,
                          const AllreduceOptions& options) {
  const auto start = Clock::now();
  std::size_t zeroed = 0;
  if (options.non_finite == NonFiniteAction::Zero) {
    zeroed = detail::zero_non_finite(std::as_writable_bytes(input), DType::Float32);
  }
  const std::span<float> mine = reduce_scatter(comm, input, options.op, options);
  if (mine.data() != output.data()) std::memmove(output.data(), mine.data(), mine.size_bytes());
  if (options.stats != nullptr) {
    *options.stats = {};
    options.stats->algorithm = AllreduceAlgorithm::Ring;
    options.stats->comm_seconds = std::chrono::duration<double>(Clock::now() - start).count();
    options.stats->non_finite_zeroed = zeroed;
  }
}

void dense_allgather(Communicator& comm, std::span<const float> shard, std::span<float> output,
                     const AllreduceOptions& options) {
  const auto start = Clock::now();
  std::vector<std::size_t> counts(static_cast<std::size_t>(comm.size()));
  for (int r = 0; r < comm.size(); ++r) {
    counts[static_cast<std::size_t>(r)] =
        patterns::chunk_range(output.size(), comm.size(), r).count * sizeof(float);
  }
  allgatherv(comm, std::as_bytes(shard), std::as_writable_bytes(output), counts, options);
  if (options.stats != nullptr) {
    *options.stats = {};
    options.stats->algorithm = AllreduceAlgorithm::Ring;
    options.stats->comm_seconds = std::chrono::duration<double>(Clock::now() - start).count();
  }
}

// `part` (named `name`) must be this rank's shard of the buffer `full` (named `full_name`) of
// `count` elements: its size, and either inside `full` at its own offset or not overlapping it.
void require_own_shard(const Communicator& comm, const char* name, std::span<const float> part,
                       const char* full_name, const float* full, std::size_t count) {
  const patterns::Range own = patterns::chunk_range(count, comm.size(), comm.rank());
  require(part.size() == own.count, name, [&] {
    return "holds " + std::to_string(part.size()) + " elements; rank " +
           std::to_string(comm.rank()) + "'s shard of " + std::to_string(count) + " has " +
           std::to_string(own.count) + " (reduce_scatter_shard)";
  });
  require(part.empty() || part.data() == full + own.offset || part.data() + part.size() <= full ||
              full + count <= part.data(),
          name, [&] {
            return std::string("overlaps ") + full_name +
                   " other than as this rank's own shard of it";
          });
}

}  // namespace

void compressed_reduce_scatter(Communicator& comm, std::span<float> input, std::span<float> output,
                               const AllreduceOptions& options) {
  const Half half = kReduceScatter;
  HalfPlan h;
  std::pair<compression::ErrorFeedback*, std::uint64_t> bound;
  checked(comm, options, half, input.size(), [&] {
    h = plan_half(comm, input.size(), options, half);
    require_own_shard(comm, "output", output, "input", input.data(), input.size());
    if (h.plan.compressed) bound = bind_half(comm, input.size(), h, half);
  });
  if (!h.plan.compressed) {
    dense_reduce_scatter(comm, input, output, h.options);
    return;
  }
  const auto [worker, step] = bound;
  std::size_t zeroed = 0;
  if (options.non_finite == NonFiniteAction::Zero) {
    zeroed = detail::zero_non_finite(std::as_writable_bytes(input), DType::Float32);
  }
  bool skipped = false;
  detail::run_collective(comm, h.options, [&](detail::CollectiveContext& ctx) {
    detail::CompressedRun run(ctx, h.options, *h.plan.compressor, AllreduceAlgorithm::TwoPhase,
                              worker, nullptr, step);
    run.stats().non_finite_zeroed = zeroed;
    if (run.checks_early()) run.scan_input(input);
    if (run.agree(h.plan.terms)) {
      // Every chunk of input is encoded before the sum is written: output may be input's own.
      const detail::TwoPhaseLayout layout(run, input.size(), ctx.size());
      detail::two_phase_scatter(run, layout, input, output);
    }
    skipped = run.stats().non_finite_skipped;
    run.publish();
  });
  if (options.state != nullptr && !skipped) detail::StateBinding::advance(*options.state);
}

void compressed_allgather(Communicator& comm, std::span<const float> shard, std::span<float> output,
                          const AllreduceOptions& options) {
  const Half half = kAllgather;
  HalfPlan h;
  std::pair<compression::ErrorFeedback*, std::uint64_t> bound;
  checked(comm, options, half, output.size(), [&] {
    h = plan_half(comm, output.size(), options, half);
    require_own_shard(comm, "shard", shard, "output", output.data(), output.size());
    if (h.plan.compressed) bound = bind_half(comm, output.size(), h, half);
  });
  if (!h.plan.compressed) {
    dense_allgather(comm, shard, output, h.options);
    return;
  }
  const auto [server, step] = bound;
  bool skipped = false;
  detail::run_collective(comm, h.options, [&](detail::CollectiveContext& ctx) {
    detail::CompressedRun run(ctx, h.options, *h.plan.compressor, AllreduceAlgorithm::TwoPhase,
                              nullptr, server, step);
    // The shard alone (its residual is checked when it is encoded, see encode_server).
    if (run.checks_early()) run.scan_input(shard);
    if (run.agree(h.plan.terms)) {
      const detail::TwoPhaseLayout layout(run, output.size(), ctx.size());
      detail::two_phase_gather(run, layout, shard, output);
    }
    skipped = run.stats().non_finite_skipped;
    run.publish();
  });
  if (options.state != nullptr && !skipped) detail::StateBinding::advance(*options.state);
}

}  // namespace frugal
