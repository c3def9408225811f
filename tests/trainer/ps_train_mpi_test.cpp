// frugal-train's --sync async-ps under mpirun -np 3 on a synthetic dataset (no files): one worker
// with two servers and s = 0 trains as the synchronous trainer on one rank does (same losses); two
// workers with one server and a straggler keep the staleness within s, the servers apply every
// push, and the epoch records carry every parameter-server field.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cmath>
#include <random>
#include <sstream>

#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/mpi.hpp"
#include "synthetic_training.hpp"
#include "trainer.hpp"

namespace frugal::train {
namespace {

using testing::Counted;
using testing::counted_communicator;
using testing::flat_parameters;
using testing::small_options;
using testing::SyntheticDataset;

class PsTrainMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    world_ = counted_communicator(MPI_COMM_WORLD);
    ASSERT_EQ(world_.comm->size(), 3) << "run under mpirun -np 3";
  }
  Counted world_;
  std::ostringstream out_;
};

// One worker (rank 0), two servers (ranks 1, 2), s = 0: the servers' momentum SGD on the
// worker's gradient plus weight decay is the synchronous trainer's step on one rank. Not bit for
// bit: torch fuses w − lr·v and g + λ·w into one rounding where the servers round twice, ~1 ulp
// a step; the losses stay within 1e-4 relative over 40 steps and the weights within 1e-4.
TEST_F(PsTrainMpi, OneWorkerWithStalenessZeroEqualsTheSynchronousTrainer) {
  const SyntheticDataset train(320, 31), val(64, 32);
  for (const double momentum : {0.0, 0.9}) {
    SCOPED_TRACE(momentum == 0 ? "plain SGD" : "momentum 0.9");
    TrainOptions o = small_options(2);
    o.sgd.momentum = momentum;
    o.async_ps = true;
    o.servers = 2;
    const RunResult ps = run_training(*world_.comm, world_.counter, train, val, o, out_);
    if (world_.comm->rank() != 0) {
      ASSERT_TRUE(ps.server.has_value());
      EXPECT_EQ(ps.server->applied, 40u);
      EXPECT_EQ(ps.server->max_staleness, 0);
      continue;
    }
    ASSERT_FALSE(ps.server.has_value());
    Counted self = counted_communicator(MPI_COMM_SELF);
    o.async_ps = false;
    o.servers = 1;
    const RunResult sync = run_training(*self.comm, self.counter, train, val, o, out_);
    ASSERT_EQ(sync.step_losses.size(), 40u);
    ASSERT_EQ(ps.step_losses.size(), 40u);
    for (std::size_t i = 0; i < 40; ++i) {
      EXPECT_NEAR(ps.step_losses[i], sync.step_losses[i], 1e-4 * std::abs(sync.step_losses[i]))
          << "step " << i;
    }
    const torch::Tensor a = flat_parameters(*ps.model), b = flat_parameters(*sync.model);
    EXPECT_LT(((a - b).norm() / b.norm()).item<double>(), 1e-4);
    EXPECT_LT(sync.epochs[1].train_loss, sync.step_losses.front());  // it did learn
    EXPECT_EQ(ps.epochs[1].pushes, 20u);
    EXPECT_EQ(ps.epochs[1].applied_updates, 40u);
    EXPECT_EQ(ps.epochs[1].staleness_max, 0);
    EXPECT_GT(ps.epochs[1].push_bytes, 0u);
    EXPECT_GT(ps.epochs[1].pull_bytes, 0u);
    EXPECT_NEAR(ps.epochs[1].val_loss, sync.epochs[1].val_loss, 1e-3 * sync.epochs[1].val_loss);
  }
}

// Two workers (ranks 0, 1), one server, worker 1 three times slower: the staleness stays within
// s on every push and reaches it, and the servers applied exactly the pushes.
TEST_F(PsTrainMpi, AStragglerKeepsTheStalenessWithinTheBoundAndEveryPushIsApplied) {
  const SyntheticDataset train(320, 31), val(64, 32);
  for (const std::int64_t s : {std::int64_t{0}, std::int64_t{2}}) {
    SCOPED_TRACE("staleness " + std::to_string(s));
    TrainOptions o = small_options(2);
    o.async_ps = true;
    o.servers = 1;
    o.staleness = s;
    o.straggler_rank = 1;
    o.straggler_factor = 3;
    o.sync.compression.method = compression::Method::OneBit;
    const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
    if (world_.comm->rank() == 2) {
      ASSERT_TRUE(r.server.has_value());
      EXPECT_LE(r.server->max_staleness, s);
      EXPECT_EQ(r.server->applied, 80u);  // 2 workers × 20 steps (batch 8 of 160) × 2 epochs
      EXPECT_EQ(r.server->applied_per_worker, (std::vector<std::uint64_t>{40, 40}));
      continue;
    }
    for (const EpochSummary& e : r.epochs) {
      EXPECT_EQ(e.pushes, 40u);  // both workers'
      EXPECT_LE(e.staleness_max, s);
      EXPECT_GE(e.staleness_mean, 0.0);
    }
    EXPECT_EQ(r.epochs[1].applied_updates, 80u);
    // The fast worker runs ahead of the straggler as far as the bound lets it.
    if (s > 0) {
      EXPECT_GE(r.epochs[0].staleness_max, 1);
    }
  }
}

TEST_F(PsTrainMpi, BadOptionsAreRefusedByNameOnEveryRank) {
  const SyntheticDataset train(320, 31), val(64, 32);
  TrainOptions o = small_options(2);
  o.async_ps = true;
  o.servers = 3;
  try {
    run_training(*world_.comm, world_.counter, train, val, o, out_);
    ADD_FAILURE() << "accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("--servers"), std::string::npos) << e.what();
  }
  o.servers = 1;
  o.sgd.momentum_correction = true;
  EXPECT_THROW(run_training(*world_.comm, world_.counter, train, val, o, out_), Error);
  o.sgd.momentum_correction = false;
  o.straggler_rank = 2;  // a server, not a worker
  EXPECT_THROW(run_training(*world_.comm, world_.counter, train, val, o, out_), Error);
}

}  // namespace
}  // namespace frugal::train
