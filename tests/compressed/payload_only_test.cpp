// The quantizers' compressed allreduce encodes payload and residual only (no reconstruction,
// which nobody reads) and, after a clean agreed scan, keeps no copy of the old residual. Checked
// here against a serial model built on the encode that does both (encode_with_feedback writing
// `applied`, unchecked) and on one decode_add per source: results and worker and server
// residuals bit for bit on every rank, for every quantizer and both algorithms, every
// NonFiniteAction and NonFinitePolicy, both ops, P = 1..8, counts that fill no block.
#include <gtest/gtest.h>

#include <cstring>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "chunking.hpp"
#include "compressed_cases.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

namespace fc = compression;

bool same_bits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), 4 * a.size()) == 0);
}

// Every rank's residuals and the result, step by step, as the documented algorithm computes them.
class Model {
 public:
  Model(int ranks, std::size_t count, const AllreduceOptions& options, AllreduceAlgorithm algorithm)
      : ranks_(ranks),
        count_(count),
        options_(options),
        two_phase_(algorithm == AllreduceAlgorithm::TwoPhase),
        compressor_(fc::make_compressor(options.compression)) {
    for (int r = 0; r < ranks; ++r) {
      worker.emplace_back(count);
      server.emplace_back(two_phase_ ? patterns::chunk_range(count, ranks, r).count : 0);
    }
  }

  std::vector<float> step(const std::vector<std::vector<float>>& inputs) {
    std::vector<float> result(count_, 0.0f);
    for (int c = 0; c < (two_phase_ ? ranks_ : 1); ++c) {
      const patterns::Range chunk =
          two_phase_ ? patterns::chunk_range(count_, ranks_, c) : patterns::Range{0, count_};
      std::vector<float> sum(chunk.count, 0.0f);
      for (int r = 0; r < ranks_; ++r) {
        const auto& in = inputs[static_cast<std::size_t>(r)];
        const std::vector<float> part(in.begin() + static_cast<std::ptrdiff_t>(chunk.offset),
                                      in.begin() + static_cast<std::ptrdiff_t>(chunk.end()));
        fc::Rng rng(options_.seed, static_cast<std::uint64_t>(r), step_, chunk.offset);
        compressor_->decode_add(
            encode(worker[static_cast<std::size_t>(r)], part, rng, chunk.offset), sum);
      }
      if (options_.op == ReduceOp::Average) {
        for (float& x : sum) x /= static_cast<float>(ranks_);
      }
      const std::span<float> out = std::span(result).subspan(chunk.offset, chunk.count);
      if (!two_phase_) {
        std::copy(sum.begin(), sum.end(), out.begin());
        continue;
      }
      fc::Rng rng(options_.seed ^ kServerSeedSalt, static_cast<std::uint64_t>(c), step_,
                  chunk.offset);
      compressor_->decode(encode(server[static_cast<std::size_t>(c)], sum, rng, 0), out);
    }
    ++step_;
    return result;
  }

  std::vector<fc::ErrorFeedback> worker, server;

 private:
  std::vector<std::byte> encode(fc::ErrorFeedback& feedback, const std::vector<float>& values,
                                fc::Rng& rng, std::size_t offset) {
    std::vector<std::byte> out(compressor_->max_encoded_bytes(values.size()));
    std::vector<float> applied(values.size());
    out.resize(fc::encode_with_feedback(*compressor_, feedback, values, out, rng, applied, offset));
    return out;
  }

  int ranks_;
  std::size_t count_;
  AllreduceOptions options_;
  bool two_phase_;
  std::unique_ptr<fc::Compressor> compressor_;
  std::uint64_t step_ = 0;
};

struct RankOutcome {
  std::vector<std::vector<float>> results;  // per step
  std::vector<float> worker, server;
};

void compare(const testing::MethodCase& method, AllreduceAlgorithm algorithm, int ranks,
             std::size_t count, NonFiniteAction action, fc::NonFinitePolicy policy, ReduceOp op,
             int steps) {
  SCOPED_TRACE(method.name + " " + std::string(to_string(algorithm)) +
               " P=" + std::to_string(ranks) + " n=" + std::to_string(count) + " action " +
               std::string(to_string(action)) + " policy " +
               std::string(policy == fc::NonFinitePolicy::Error ? "error" : "flag") + " " +
               std::string(to_string(op)));
  AllreduceOptions options;
  options.compression = method.config;
  options.compression.non_finite = policy;
  options.algorithm = algorithm;
  options.non_finite = action;
  options.op = op;
  options.seed = 9;
  Model model(ranks, count, options, algorithm);
  std::vector<std::vector<float>> expected;
  for (int s = 0; s < steps; ++s) {
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < ranks; ++r) {
      inputs.push_back(testing::case_input(r, static_cast<std::uint64_t>(s), count));
    }
    expected.push_back(model.step(inputs));
  }
  std::mutex mutex;
  std::vector<RankOutcome> got(static_cast<std::size_t>(ranks));
  testing::run_ranks(ranks, [&](Communicator& comm) {
    AllreduceState state;
    AllreduceOptions mine = options;
    mine.state = &state;
    RankOutcome outcome;
    for (int s = 0; s < steps; ++s) {
      std::vector<float> data =
          testing::case_input(comm.rank(), static_cast<std::uint64_t>(s), count);
      allreduce(comm, std::span<float>(data), mine);
      outcome.results.push_back(std::move(data));
    }
    outcome.worker.assign(state.worker_residual().begin(), state.worker_residual().end());
    outcome.server.assign(state.server_residual().begin(), state.server_residual().end());
    std::lock_guard lock(mutex);
    got[static_cast<std::size_t>(comm.rank())] = std::move(outcome);
  });
  for (int r = 0; r < ranks; ++r) {
    const RankOutcome& o = got[static_cast<std::size_t>(r)];
    ASSERT_EQ(o.results.size(), static_cast<std::size_t>(steps)) << "rank " << r;
    for (int s = 0; s < steps; ++s) {
      ASSERT_TRUE(
          same_bits(o.results[static_cast<std::size_t>(s)], expected[static_cast<std::size_t>(s)]))
          << "result, rank " << r << " step " << s;
    }
    ASSERT_TRUE(same_bits(o.worker, model.worker[static_cast<std::size_t>(r)].residual()))
        << "worker residual, rank " << r;
    ASSERT_TRUE(same_bits(o.server, model.server[static_cast<std::size_t>(r)].residual()))
        << "server residual, rank " << r;
  }
}

std::vector<testing::MethodCase> quantizers() {
  std::vector<testing::MethodCase> out;
  for (const testing::MethodCase& m : testing::method_cases()) {
    if (m.config.method != fc::Method::TopK) out.push_back(m);
  }
  return out;
}

// One test per quantizer and algorithm, so that a failure names them.
class PayloadOnlyEncode : public ::testing::TestWithParam<testing::MethodAlgorithm> {};

TEST_P(PayloadOnlyEncode, MatchesTheModelForEveryActionPolicyAndRankCount) {
  const testing::MethodAlgorithm& m = GetParam();
  for (int ranks = 1; ranks <= 8; ++ranks) {
    // More than one 2048-element block per two-phase chunk, a multiple of no bucket.
    const std::size_t count = 2100 * static_cast<std::size_t>(ranks) + 29;
    for (const NonFiniteAction action : enum_values<NonFiniteAction>()) {
      for (const auto policy : {fc::NonFinitePolicy::Error, fc::NonFinitePolicy::Flag}) {
        const ReduceOp op =
            (ranks + static_cast<int>(action)) % 2 == 0 ? ReduceOp::Sum : ReduceOp::Average;
        compare(m.method, m.algorithm, ranks, count, action, policy, op, 3);
      }
    }
  }
}

std::vector<testing::MethodAlgorithm> quantizer_algorithms() {
  std::vector<testing::MethodAlgorithm> out;
  for (const testing::MethodCase& m : quantizers()) {
    for (const AllreduceAlgorithm a : m.algorithms) out.push_back({m, a});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Loopback, PayloadOnlyEncode, ::testing::ValuesIn(quantizer_algorithms()),
                         [](const ::testing::TestParamInfo<testing::MethodAlgorithm>& info) {
                           return testing::param_name(info.param);
                         });

TEST(PayloadOnlyEncodeLarge, StreamingChunksMatchTheModel) {
  // Chunks of 2^21 elements and more: the fused pass streams its stores there.
  for (const testing::MethodCase& m : quantizers()) {
    if (m.name != "fp16" && m.name != "onebit" && m.name != "qsgd4") continue;
    compare(m, AllreduceAlgorithm::TwoPhase, 2, (std::size_t{1} << 22) + 40,
            NonFiniteAction::Default, fc::NonFinitePolicy::Error, ReduceOp::Sum, 2);
  }
}

}  // namespace
}  // namespace frugal
