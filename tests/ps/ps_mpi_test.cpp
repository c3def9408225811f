// The parameter server on real processes (mpirun -np 3: two workers, one server; also on frugal's
// UCX transport): s = 0 against the serial reference, replayed by the server from its own record
// of the arrival order; the staleness bound with a straggler; exact update counts (finish()
// checks each worker's against the server's); bad options refused by name on every rank.
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "frugal/collectives/parameter_server.hpp"
#include "frugal/error.hpp"
#include "ps_cases.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

Communicator& comm() {
  return testing::shared_test_communicator();
}

int workers(const ParameterServerOptions& o) {
  return comm().size() - o.servers;
}

TEST(MpiPs, SynchronousMomentumSgdMatchesTheSerialReference) {
  for (const auto method : {compression::Method::None, compression::Method::OneBit}) {
    SCOPED_TRACE(std::string(enum_name(method)));
    ParameterServerOptions o;
    o.record_order = true;
    o.compression.method = method;
    o.compression.bucket = 8;
    const testing::PsRun run = testing::run_ps(comm(), o, 15);
    if (!run.server) {
      EXPECT_EQ(run.worker.pushes, 15u);
      EXPECT_EQ(run.worker.max_staleness, 0);
      continue;
    }
    EXPECT_EQ(run.report.applied, static_cast<std::uint64_t>(15 * workers(o)));
    const auto want = testing::serial_reference(o, workers(o), 15, {run.report});
    EXPECT_LE(testing::max_abs_difference(run.parameters, want), 1e-6);
    EXPECT_GT(testing::max_abs_difference(want, testing::initial_parameters()), 0.1);
  }
}

TEST(MpiPs, StalenessNeverExceedsTheBoundWithAStraggler) {
  for (const std::int64_t s : {std::int64_t{0}, std::int64_t{2}, kUnboundedStaleness}) {
    SCOPED_TRACE("staleness " + std::to_string(s));
    ParameterServerOptions o;
    o.staleness = s;
    const testing::PsRun run = testing::run_ps(comm(), o, 20, std::chrono::milliseconds(4), 0);
    if (run.server) {
      EXPECT_LE(run.report.max_staleness, s);
      EXPECT_EQ(run.report.applied, static_cast<std::uint64_t>(20 * workers(o)));
    } else {
      EXPECT_LE(run.worker.max_staleness, s);
      EXPECT_EQ(run.worker.pushes, 20u);
      // The fast worker runs ahead of the straggler whenever the bound allows it.
      if (comm().rank() == 1 && s > 0) {
        EXPECT_GE(run.worker.max_staleness, 1);
      }
    }
  }
}

TEST(MpiPs, BadParametersAreRefusedByNameOnEveryRank) {
  ParameterServerOptions o;
  o.staleness = -3;
  try {
    testing::run_ps(comm(), o, 1);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("staleness"), std::string::npos) << e.what();
  }
  o.staleness = 0;
  o.servers = comm().size();
  EXPECT_THROW(testing::run_ps(comm(), o, 1), Error);
}

}  // namespace
}  // namespace frugal
