// The sparse allreduces' error paths (sparse recursive doubling with and without gTop-k, the
// sparse allgather): one rank's transport fails its i-th wait, for every i until a run has no
// fault left to inject. Every rank must come out with the injected error, another frugal::Error
// or the right result, never a hang or a crash, and with no request outliving the collective.
// The transport (fault_transport.hpp) writes into a receive buffer when its request is cancelled,
// so that a request cancelled after its buffer was freed is a use after free.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "fault_ranks.hpp"
#include "fault_transport.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"
#include "gtopk_reference.hpp"

namespace frugal {
namespace {

using testing::Faults;
using testing::FaultTransport;

struct Outcome : testing::FaultRankRecord {
  bool ok = false;
  std::vector<float> result;
};

// One allreduce over `ranks` ranks, rank `faulty` failing its wait number `fail_at`.
std::vector<Outcome> run_once(int ranks, int faulty, std::optional<int> fail_at,
                              const AllreduceOptions& options, std::size_t count) {
  std::vector<Outcome> out(static_cast<std::size_t>(ranks));
  const auto faults = [&](int r) {
    Faults f;
    if (r == faulty) f.fail_wait = fail_at;
    return f;
  };
  const std::vector<testing::FaultRankRecord> records =
      testing::run_fault_ranks(ranks, faults, [&](int r, Communicator& comm, FaultTransport&) {
        Outcome& o = out[static_cast<std::size_t>(r)];
        AllreduceState state;
        AllreduceOptions mine = options;
        mine.state = &state;
        std::vector<float> data = testing::gtopk_input(r, 0, count);
        allreduce(comm, std::span<float>(data), mine);
        o.ok = true;
        o.result = std::move(data);
      });
  for (std::size_t r = 0; r < out.size(); ++r) {
    static_cast<testing::FaultRankRecord&>(out[r]) = records[r];
  }
  return out;
}

using Case = std::tuple<AllreduceAlgorithm, bool, double, int>;
class SparseFault : public ::testing::TestWithParam<Case> {};

TEST_P(SparseFault, EveryWaitOfOneRankFailsCleanly) {
  const auto [algorithm, gtopk, density, ranks] = GetParam();
  // 4097 floats: dense vectors and the sparse ones at 0.9 go rendezvous on the loopback
  // transport (past 4096 bytes: the receiver copies from the sender's buffer).
  constexpr std::size_t kCount = 4097;
  AllreduceOptions options;
  options.compression.method = compression::Method::TopK;
  options.compression.density = density;
  options.compression.gtopk = gtopk;
  options.algorithm = algorithm;
  options.seed = 3;
  const std::vector<Outcome> clean = run_once(ranks, -1, std::nullopt, options, kCount);
  for (const Outcome& o : clean) ASSERT_TRUE(o.ok) << o.message;

  int cancels = 0;
  for (const int faulty : {0, ranks - 1}) {
    bool ran_out_of_waits = false;
    for (int fail_at = 0; fail_at < 200 && !ran_out_of_waits; ++fail_at) {
      const std::vector<Outcome> got = run_once(ranks, faulty, fail_at, options, kCount);
      const Outcome& f = got[static_cast<std::size_t>(faulty)];
      ran_out_of_waits = !f.injected;
      for (int r = 0; r < ranks; ++r) {
        const Outcome& o = got[static_cast<std::size_t>(r)];
        SCOPED_TRACE("rank " + std::to_string(r) + ", rank " + std::to_string(faulty) +
                     " failing its wait " + std::to_string(fail_at));
        EXPECT_EQ(o.live_after, 0) << "a request outlived the collective";
        cancels += o.cancelled;
        if (o.ok) {
          EXPECT_EQ(o.result, clean[static_cast<std::size_t>(r)].result);
          continue;
        }
        testing::expect_failed_cleanly(o, r == faulty && f.injected);
      }
      if (!ran_out_of_waits) {
        // The faulty rank threw: it did not finish.
        EXPECT_FALSE(f.ok);
      } else {
        for (const Outcome& o : got) EXPECT_TRUE(o.ok) << o.message;
      }
    }
    EXPECT_TRUE(ran_out_of_waits) << "more than 200 waits";
  }
  // The sweep reached requests in flight (else it tested nothing of the cancel path).
  EXPECT_GT(cancels, 0);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  const auto [algorithm, gtopk, density, ranks] = info.param;
  std::ostringstream name;
  name << (algorithm == AllreduceAlgorithm::SparseAllgather ? "allgather"
           : gtopk                                          ? "gtopk"
                                                            : "sparse_rd")
       << "_d" << static_cast<int>(density * 100) << "_p" << ranks;
  return name.str();
}

INSTANTIATE_TEST_SUITE_P(
    RecursiveDoubling, SparseFault,
    ::testing::Combine(::testing::Values(AllreduceAlgorithm::SparseRecursiveDoubling),
                       ::testing::Values(false, true), ::testing::Values(0.01, 0.9),
                       ::testing::Values(2, 3, 4)),
    case_name);

INSTANTIATE_TEST_SUITE_P(Allgather, SparseFault,
                         ::testing::Combine(::testing::Values(AllreduceAlgorithm::SparseAllgather),
                                            ::testing::Values(false), ::testing::Values(0.01, 0.9),
                                            ::testing::Values(2, 3, 4)),
                         case_name);

}  // namespace
}  // namespace frugal
