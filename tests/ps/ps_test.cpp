// The parameter server on in-process loopback ranks: s = 0 against the serial reference (dense,
// Nesterov, compressed with error feedback), the staleness bound with a straggler, exact update
// counts, refresh, a dead server and a dead worker (both policies), bad and disagreeing options.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "frugal/collectives/parameter_server.hpp"
#include "frugal/error.hpp"
#include "loopback_harness.hpp"
#include "ps_cases.hpp"

namespace frugal {
namespace {

using testing::PsRun;
using testing::run_ranks;

std::vector<PsRun> run_all(int workers, const ParameterServerOptions& o, std::uint64_t steps,
                           std::chrono::microseconds straggle = {}, int straggler = -1) {
  std::vector<PsRun> runs(static_cast<std::size_t>(workers + o.servers));
  run_ranks(workers + o.servers, [&](Communicator& comm) {
    runs[static_cast<std::size_t>(comm.rank())] =
        testing::run_ps(comm, o, steps, straggle, straggler);
  });
  return runs;
}

std::vector<ServerReport> reports_of(const std::vector<PsRun>& runs) {
  std::vector<ServerReport> reports;
  for (const PsRun& r : runs) {
    if (r.server) reports.push_back(r.report);
  }
  return reports;
}

// Every server applied exactly what every worker pushed, worker by worker.
void expect_exact_counts(const std::vector<PsRun>& runs, int workers, std::uint64_t steps) {
  std::uint64_t pushed = 0;
  for (int w = 0; w < workers; ++w) {
    EXPECT_EQ(runs[static_cast<std::size_t>(w)].worker.pushes, steps) << "worker " << w;
    pushed += runs[static_cast<std::size_t>(w)].worker.pushes;
  }
  // The refresh after the last step waits for every worker's last push.
  for (int w = 0; w < workers; ++w) {
    EXPECT_EQ(runs[static_cast<std::size_t>(w)].servers_applied, pushed) << "worker " << w;
  }
  for (const ServerReport& r : reports_of(runs)) {
    EXPECT_EQ(r.applied, pushed) << "server " << r.server;
    for (int w = 0; w < workers; ++w) {
      EXPECT_EQ(r.applied_per_worker[static_cast<std::size_t>(w)],
                runs[static_cast<std::size_t>(w)].worker.pushes);
    }
    EXPECT_TRUE(r.failed_workers.empty());
  }
}

void expect_reference(int workers, ParameterServerOptions o, std::uint64_t steps) {
  o.staleness = 0;
  o.record_order = true;
  const auto runs = run_all(workers, o, steps);
  expect_exact_counts(runs, workers, steps);
  const std::vector<float> want = testing::serial_reference(o, workers, steps, reports_of(runs));
  for (int w = 0; w < workers; ++w) {
    const PsRun& r = runs[static_cast<std::size_t>(w)];
    EXPECT_LE(testing::max_abs_difference(r.parameters, want), 1e-6) << "worker " << w;
    EXPECT_EQ(r.worker.max_staleness, 0);
  }
  for (const ServerReport& r : reports_of(runs)) {
    EXPECT_EQ(r.max_staleness, 0);
    // Every round's pushes but the first reach the shard after the others of their round.
    EXPECT_LE(r.max_update_lag, static_cast<std::uint64_t>(workers - 1));
  }
  // The parameters moved: the reference is not the starting point.
  EXPECT_GT(testing::max_abs_difference(want, testing::initial_parameters()), 0.1);
}

struct Shape {
  int workers, servers;
};

class PsShapes : public ::testing::TestWithParam<Shape> {};

TEST_P(PsShapes, SynchronousMomentumSgdMatchesTheSerialReference) {
  ParameterServerOptions o;
  o.servers = GetParam().servers;
  expect_reference(GetParam().workers, o, 12);
}

TEST_P(PsShapes, NesterovMatchesTheSerialReference) {
  ParameterServerOptions o;
  o.servers = GetParam().servers;
  o.nesterov = true;
  o.momentum = 0.5;
  expect_reference(GetParam().workers, o, 8);
}

TEST_P(PsShapes, CompressedPushesWithErrorFeedbackMatchTheSerialReference) {
  for (const auto method :
       {compression::Method::TopK, compression::Method::OneBit, compression::Method::Qsgd}) {
    SCOPED_TRACE(std::string(enum_name(method)));
    ParameterServerOptions o;
    o.servers = GetParam().servers;
    o.compression.method = method;
    o.compression.density = 0.2;
    o.compression.bucket = 8;
    o.seed = 11;
    expect_reference(GetParam().workers, o, 10);
  }
}

INSTANTIATE_TEST_SUITE_P(WorkersServers, PsShapes,
                         ::testing::Values(Shape{1, 1}, Shape{2, 1}, Shape{3, 2}, Shape{2, 3}),
                         [](const auto& info) {
                           return std::to_string(info.param.workers) + "w" +
                                  std::to_string(info.param.servers) + "s";
                         });

TEST(Ps, ShardsAreContiguousBalancedAndCoverEveryParameter) {
  for (const int servers : {1, 2, 3, 5, 37}) {
    std::size_t at = 0;
    for (int j = 0; j < servers; ++j) {
      const auto [begin, end] = shard_range(37, servers, j);
      EXPECT_EQ(begin, at);
      EXPECT_GE(end - begin, 37u / static_cast<std::size_t>(servers));
      EXPECT_LE(end - begin, 37u / static_cast<std::size_t>(servers) + 1);
      at = end;
    }
    EXPECT_EQ(at, 37u);
  }
  EXPECT_EQ(shard_range(10, 3, 0), std::make_pair(std::size_t{0}, std::size_t{3}));
  EXPECT_EQ(shard_range(10, 3, 2), std::make_pair(std::size_t{6}, std::size_t{10}));
  EXPECT_THROW(shard_range(2, 3, 0), Error);
  EXPECT_THROW(shard_range(10, 3, 3), Error);
}

// A worker sleeping before each push: the others run ahead of it up to the bound and no
// further; s = 0 keeps everyone in lockstep; unbounded lets them run far ahead.
TEST(Ps, StalenessNeverExceedsTheBoundWithAStraggler) {
  constexpr std::uint64_t kSteps = 24;
  for (const std::int64_t s :
       {std::int64_t{0}, std::int64_t{1}, std::int64_t{3}, kUnboundedStaleness}) {
    SCOPED_TRACE("staleness " + std::to_string(s));
    ParameterServerOptions o;
    o.servers = 2;
    o.staleness = s;
    const auto runs = run_all(3, o, kSteps, std::chrono::milliseconds(3), 2);
    expect_exact_counts(runs, 3, kSteps);
    std::int64_t seen = 0;
    for (int w = 0; w < 3; ++w) {
      const WorkerStats& st = runs[static_cast<std::size_t>(w)].worker;
      EXPECT_LE(st.max_staleness, s) << "worker " << w;
      seen = std::max(seen, st.max_staleness);
    }
    for (const ServerReport& r : reports_of(runs)) EXPECT_LE(r.max_staleness, s);
    // The fast workers do run ahead as far as the bound lets them (well beyond 3 unbounded).
    if (s == kUnboundedStaleness) {
      EXPECT_GT(seen, 3);
    } else {
      EXPECT_EQ(seen, s);
    }
    // After the final refresh every worker holds the same parameters: those of the servers.
    for (int w = 1; w < 3; ++w) {
      EXPECT_EQ(runs[static_cast<std::size_t>(w)].parameters, runs[0].parameters);
    }
  }
}

TEST(Ps, CompressedPushesSendFewerBytes) {
  ParameterServerOptions dense;
  dense.servers = 1;
  ParameterServerOptions onebit = dense;
  onebit.compression.method = compression::Method::OneBit;
  onebit.compression.bucket = 32;
  const auto d = run_all(2, dense, 6);
  const auto c = run_all(2, onebit, 6);
  // Worker 1 sends no Init; 37 parameters are few, so the headers weigh: 2/3 at most.
  EXPECT_LT(c[1].worker.bytes_pushed * 3, d[1].worker.bytes_pushed * 2);
  EXPECT_EQ(c[0].worker.bytes_pulled, d[0].worker.bytes_pulled);  // pulls stay dense
  EXPECT_EQ(c[2].report.bytes_received, c[0].worker.bytes_pushed + c[1].worker.bytes_pushed);
}

// What each rank threw (empty: nothing).
struct Failures {
  std::mutex mutex;
  std::vector<std::string> what;
  std::vector<std::optional<ErrorCode>> code;
  std::vector<double> seconds;
  explicit Failures(int n) : what(n), code(n), seconds(n) {}
  void record(int rank, const Error& e, double s) {
    const std::lock_guard lock(mutex);
    what[static_cast<std::size_t>(rank)] = e.what();
    code[static_cast<std::size_t>(rank)] = e.code();
    seconds[static_cast<std::size_t>(rank)] = s;
  }
};

// Runs `body`; records a frugal::Error and rethrows it, so that the harness fails the rank.
template <typename Body>
void recorded(Failures& f, Communicator& comm, Body body) {
  const auto start = std::chrono::steady_clock::now();
  try {
    body();
  } catch (const Error& e) {
    f.record(comm.rank(), e,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    throw;
  }
}

constexpr auto kTimeout = std::chrono::milliseconds(1500);

TEST(Ps, ADeadServerIsAnErrorOnEveryWorkerWithinTheTimeout) {
  ParameterServerOptions o;
  o.servers = 2;
  Failures f(4);
  std::atomic<int> steps_done{0};
  // The harness marks a rank that throws as failed (PeerFailure for its peers) and rethrows.
  EXPECT_THROW(run_ranks(
                   4,
                   [&](Communicator& comm) {
                     recorded(f, comm, [&] {
                       if (comm.rank() == 3) {
                         PsServer server(comm, testing::kElements, o);
                         throw Error(ErrorCode::Internal, "server 3 dies before serving");
                       }
                       if (comm.rank() == 2) {
                         PsServer(comm, testing::kElements, o).serve();
                         return;
                       }
                       std::vector<float> x = testing::initial_parameters();
                       PsWorker worker(comm, x, o);
                       for (std::uint64_t t = 0; t < 5; ++t) {
                         worker.push_pull(testing::gradient_of(x, comm.rank(), t), 0.1);
                         ++steps_done;
                       }
                     });
                   },
                   kTimeout),
               Error);
  EXPECT_EQ(steps_done.load(), 0);
  for (int w = 0; w < 2; ++w) {
    SCOPED_TRACE("worker " + std::to_string(w));
    ASSERT_TRUE(f.code[static_cast<std::size_t>(w)].has_value());
    const ErrorCode c = *f.code[static_cast<std::size_t>(w)];
    EXPECT_TRUE(c == ErrorCode::PeerFailure || c == ErrorCode::Timeout) << f.what[w];
    EXPECT_LT(f.seconds[static_cast<std::size_t>(w)], 2.5 * 1.5) << f.what[w];
  }
  // The surviving server sees its workers go and stops too (policy Stop).
  ASSERT_TRUE(f.code[2].has_value());
}

// A server that stops answering without dying (stalled): every worker gets Timeout naming the
// server's receive, within twice the timeout, not a hang.
TEST(Ps, AStalledServerIsATimeoutOnEveryWorkerWithinTwiceTheTimeout) {
  ParameterServerOptions o;
  o.servers = 1;
  Failures f(3);
  std::atomic<bool> workers_done{false};
  EXPECT_THROW(run_ranks(
                   3,
                   [&](Communicator& comm) {
                     recorded(f, comm, [&] {
                       if (comm.rank() == 2) {
                         PsServer server(comm, testing::kElements, o);
                         // Stalled: alive, its transport open, but never serving.
                         while (!workers_done)
                           std::this_thread::sleep_for(std::chrono::milliseconds(5));
                         return;
                       }
                       std::vector<float> x = testing::initial_parameters();
                       PsWorker worker(comm, x, o);
                       try {
                         worker.push_pull(testing::gradient_of(x, comm.rank(), 0), 0.1);
                       } catch (const Error&) {
                         if (comm.rank() == 0) workers_done = true;
                         throw;
                       }
                     });
                   },
                   kTimeout),
               Error);
  for (int w = 0; w < 2; ++w) {
    SCOPED_TRACE("worker " + std::to_string(w));
    ASSERT_TRUE(f.code[static_cast<std::size_t>(w)].has_value());
    const ErrorCode c = *f.code[static_cast<std::size_t>(w)];
    EXPECT_TRUE(c == ErrorCode::Timeout || c == ErrorCode::PeerFailure)
        << f.what[static_cast<std::size_t>(w)];
    EXPECT_LT(f.seconds[static_cast<std::size_t>(w)], 2 * 1.5 + 1.0);
  }
  // Worker 0 waited out the deadline itself: a Timeout naming the server's rank.
  EXPECT_EQ(*f.code[0], ErrorCode::Timeout);
  EXPECT_NE(f.what[0].find("peer 2"), std::string::npos) << f.what[0];
  EXPECT_GE(f.seconds[0], 2 * 1.5 - 0.1);
}

void dead_worker(WorkerFailurePolicy policy) {
  ParameterServerOptions o;
  o.servers = 2;
  o.staleness = 1;
  o.on_worker_failure = policy;
  Failures f(5);
  std::vector<PsRun> runs(5);
  EXPECT_THROW(run_ranks(
                   5,
                   [&](Communicator& comm) {
                     recorded(f, comm, [&] {
                       if (comm.rank() >= 3) {
                         PsServer server(comm, testing::kElements, o);
                         runs[static_cast<std::size_t>(comm.rank())].report = server.serve();
                         return;
                       }
                       std::vector<float> x = testing::initial_parameters();
                       PsWorker worker(comm, x, o);
                       for (std::uint64_t t = 0; t < 12; ++t) {
                         if (comm.rank() == 1 && t == 3)
                           throw Error(ErrorCode::Internal, "worker 1 dies");
                         worker.push_pull(testing::gradient_of(x, comm.rank(), t), 0.1);
                       }
                       worker.finish();
                       runs[static_cast<std::size_t>(comm.rank())].worker = worker.stats();
                     });
                   },
                   kTimeout),
               Error);
  if (policy == WorkerFailurePolicy::Stop) {
    // The failure cascades (a worker told to stop fails in turn, and a server may see that
    // second failure first), but it starts from worker 1, whom at least the first verdict names.
    int naming_worker_1 = 0;
    for (const int r : {0, 2, 3, 4}) {
      SCOPED_TRACE("rank " + std::to_string(r));
      ASSERT_TRUE(f.code[static_cast<std::size_t>(r)].has_value());
      EXPECT_EQ(*f.code[static_cast<std::size_t>(r)], ErrorCode::PeerFailure);
      const std::string& what = f.what[static_cast<std::size_t>(r)];
      EXPECT_NE(what.find("worker rank "), std::string::npos) << what;
      if (what.find("worker rank 1") != std::string::npos) ++naming_worker_1;
      EXPECT_LT(f.seconds[static_cast<std::size_t>(r)], 2.5 * 1.5);
    }
    EXPECT_GE(naming_worker_1, 1);
    return;
  }
  for (const int r : {0, 2, 3, 4}) {
    EXPECT_FALSE(f.code[static_cast<std::size_t>(r)].has_value()) << f.what[r];
  }
  for (const int s : {3, 4}) {
    const ServerReport& r = runs[static_cast<std::size_t>(s)].report;
    EXPECT_EQ(r.failed_workers, std::vector<int>{1});
    EXPECT_EQ(r.applied_per_worker, (std::vector<std::uint64_t>{12, 3, 12}));
    EXPECT_EQ(r.applied, runs[0].worker.pushes + runs[2].worker.pushes + 3);
  }
}

TEST(Ps, ADeadWorkerStopsEveryRankUnderPolicyStop) {
  dead_worker(WorkerFailurePolicy::Stop);
}

TEST(Ps, ADeadWorkerIsDroppedAndTheOthersFinishUnderPolicyContinue) {
  dead_worker(WorkerFailurePolicy::Continue);
}

// A worker that falls silent (alive, no death reported) is dropped for its silence; the answers
// held for it must go out then, or the others would wait into their own Timeout.
TEST(Ps, ASilentWorkerIsDroppedAndTheOthersFinishUnderPolicyContinue) {
  ParameterServerOptions o;
  o.servers = 1;
  o.staleness = 0;
  o.on_worker_failure = WorkerFailurePolicy::Continue;
  Failures f(4);
  std::vector<PsRun> runs(4);
  EXPECT_THROW(run_ranks(
                   4,
                   [&](Communicator& comm) {
                     recorded(f, comm, [&] {
                       if (comm.rank() == 3) {
                         PsServer server(comm, testing::kElements, o);
                         runs[3].report = server.serve();
                         return;
                       }
                       std::vector<float> x = testing::initial_parameters();
                       PsWorker worker(comm, x, o);
                       for (std::uint64_t t = 0; t < 8; ++t) {
                         if (comm.rank() == 1 && t == 2) {
                           std::this_thread::sleep_for(3 * kTimeout);
                           throw Error(ErrorCode::Internal, "worker 1 gives up");
                         }
                         worker.push_pull(testing::gradient_of(x, comm.rank(), t), 0.1);
                       }
                       worker.finish();
                       runs[static_cast<std::size_t>(comm.rank())].worker = worker.stats();
                     });
                   },
                   kTimeout),
               Error);
  for (const int r : {0, 2, 3}) {
    EXPECT_FALSE(f.code[static_cast<std::size_t>(r)].has_value()) << f.what[r];
  }
  const ServerReport& r = runs[3].report;
  EXPECT_EQ(r.failed_workers, std::vector<int>{1});
  EXPECT_EQ(r.applied_per_worker, (std::vector<std::uint64_t>{8, 2, 8}));
}

// Every rank gets InvalidArgument naming the parameter, servers and workers alike.
void expect_refused(int ranks, const ParameterServerOptions& o, const std::string& name,
                    std::size_t elements = testing::kElements) {
  std::mutex mutex;
  int refused = 0;
  run_ranks(ranks, [&](Communicator& comm) {
    try {
      if (is_server_rank(comm.rank(), comm.size(), std::max(o.servers, 1)) &&
          o.servers < comm.size()) {
        PsServer server(comm, elements, o);
      } else {
        std::vector<float> x(elements);
        PsWorker worker(comm, x, o);
      }
      ADD_FAILURE() << "rank " << comm.rank() << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      const std::lock_guard lock(mutex);
      ++refused;
    }
  });
  EXPECT_EQ(refused, ranks);
}

TEST(Ps, BadParametersAreRefusedByNameOnEveryRank) {
  ParameterServerOptions o;
  o.servers = 0;
  expect_refused(3, o, "servers");
  o.servers = 3;
  expect_refused(3, o, "servers");
  o.servers = 1;
  o.staleness = -1;
  expect_refused(3, o, "staleness");
  o.staleness = 0;
  o.momentum = 1;
  expect_refused(3, o, "momentum");
  o.momentum = 0;
  o.nesterov = true;
  expect_refused(3, o, "nesterov");
  o.nesterov = false;
  o.servers = 2;
  expect_refused(3, o, "parameters", 1);
  o.compression.method = compression::Method::TopK;
  o.compression.density = 0;
  expect_refused(3, o, "compression");
  // A shard has no tensor boundaries to select within: per-tensor top-k would silently be global.
  o.compression.density = 0.1;
  o.compression.topk_scope = compression::TopKScope::PerTensor;
  expect_refused(3, o, "compression");
  // gTop-k cuts a sparse allreduce's sum, which the server does not run: refused, not ignored.
  o.compression.topk_scope = compression::TopKScope::Global;
  o.compression.gtopk = true;
  expect_refused(3, o, "compression");
}

TEST(Ps, RanksThatDisagreeGetAMismatchOnEveryRank) {
  int mismatches = 0;
  std::mutex mutex;
  run_ranks(3, [&](Communicator& comm) {
    ParameterServerOptions o;
    o.staleness = comm.rank() == 1 ? 2 : 0;
    try {
      if (comm.rank() == 2) {
        PsServer server(comm, testing::kElements, o);
      } else {
        std::vector<float> x(testing::kElements);
        PsWorker worker(comm, x, o);
      }
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Mismatch);
      EXPECT_NE(std::string(e.what()).find("staleness"), std::string::npos) << e.what();
      const std::lock_guard lock(mutex);
      ++mismatches;
    }
  });
  EXPECT_EQ(mismatches, 3);
}

TEST(Ps, ABadGradientIsRefusedBeforeAnythingIsSent) {
  ParameterServerOptions o;
  run_ranks(2, [&](Communicator& comm) {
    if (comm.rank() == 1) {
      PsServer server(comm, testing::kElements, o);
      EXPECT_EQ(server.serve().applied, 1u);
      return;
    }
    std::vector<float> x = testing::initial_parameters();
    PsWorker worker(comm, x, o);
    std::vector<float> g(testing::kElements, 0.5f);
    g[3] = NAN;
    EXPECT_THROW(worker.push_pull(g, 0.1), Error);
    EXPECT_THROW(worker.push_pull(std::vector<float>(3), 0.1), Error);
    EXPECT_THROW(worker.push_pull(std::vector<float>(testing::kElements), NAN), Error);
    EXPECT_EQ(worker.stats().pushes, 0u);
    g[3] = 0.5f;
    worker.push_pull(g, 0.1);
    // Momentum's first step is plain SGD: x − lr·g.
    EXPECT_FLOAT_EQ(x[0], testing::initial_parameters()[0] - 0.1f * 0.5f);
    worker.finish();
  });
}

}  // namespace
}  // namespace frugal
