// --shard-optimizer under mpirun (np 2 and 3) on a synthetic dataset: with a dense
// reduce-scatter it trains the same weights as the unsharded dense run, each rank holds the
// momentum of its shard only (logged as optimizer_state_bytes), compressed it learns, and the
// options it does not combine with are refused on every rank.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "frugal/collectives/reduce_scatter.hpp"
#include "frugal/error.hpp"
#include "models/resnet.hpp"
#include "synthetic_training.hpp"
#include "trainer.hpp"

namespace frugal::train {
namespace {

using testing::Counted;
using testing::counted_communicator;
using testing::flat_parameters;
using testing::SyntheticDataset;

class ShardMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    world_ = counted_communicator(MPI_COMM_WORLD);
  }
  // small_options with a global batch every tested world size divides: 240 images, 10 steps.
  static TrainOptions options() {
    TrainOptions o = testing::small_options(1);
    o.schedule.global_batch = 24;
    o.schedule.ref_batch = 24;
    return o;
  }
  std::string log_path(const std::string& name) const {
    return (std::filesystem::temp_directory_path() /
            ("frugal-shard-test-" + name + "-np" + std::to_string(world_.comm->size()) + ".jsonl"))
        .string();
  }
  Counted world_;
  std::ostringstream out_;
};

// The epoch record's optimizer_state_bytes (rank 0 writes the log).
std::uint64_t logged_state_bytes(const std::string& path) {
  std::ifstream in(path);
  std::string line, last;
  while (std::getline(in, line)) {
    if (line.find("\"kind\":\"epoch\"") != std::string::npos) last = line;
  }
  const std::string key = "\"optimizer_state_bytes\":";
  const std::size_t at = last.find(key);
  if (at == std::string::npos) return 0;
  return std::stoull(last.substr(at + key.size()));
}

// Dense reduce-scatter: the same training as the unsharded dense allreduce. Only the order in
// which the ranks' gradient shares are added may differ (a ring over even shards against the
// buckets' algorithms): at np 2 a + b == b + a and the weights come out bit-identical; at np 3
// the rounding differs by ~1e-7 relative per step, measured 1.5e-9 after the 10 steps. The bound,
// 1e-6, leaves three orders of magnitude for other machines and libtorch builds, and a wrong
// update moves the weights far more: one of the 10 steps' weight decay (lr·λ = 2.5e-5 of the
// weights) missing, or a shard written at the wrong offset.
TEST_F(ShardMpi, DenseShardedTrainsTheUnshardedWeights) {
  const SyntheticDataset train(240, 71), val(64, 72);
  for (const bool nesterov : {false, true}) {
    SCOPED_TRACE(nesterov ? "nesterov, no weight decay on 1-D parameters" : "plain momentum");
    TrainOptions o = options();
    o.sgd.nesterov = nesterov;
    o.no_wd_bn_bias = nesterov;
    o.log_path = log_path("dense-unsharded");
    const RunResult plain = run_training(*world_.comm, world_.counter, train, val, o, out_);
    const std::string plain_log = o.log_path;
    o.shard_optimizer = true;
    o.log_path = log_path("dense-sharded");
    const RunResult sharded = run_training(*world_.comm, world_.counter, train, val, o, out_);
    ASSERT_EQ(sharded.step_losses.size(), 10u);
    ASSERT_EQ(plain.step_losses.size(), 10u);
    const torch::Tensor a = flat_parameters(*sharded.model);
    const torch::Tensor b = flat_parameters(*plain.model);
    const double rel = ((a - b).norm() / b.norm()).item<double>();
    EXPECT_LE(rel, 1e-6);
    torch::manual_seed(o.seed);
    const auto init = make_model({o.model, 1, 4});
    const double moved = ((b - flat_parameters(*init)).norm() / b.norm()).item<double>();
    EXPECT_GT(moved, 1e-3);
    // Every rank holds the same weights: rank 0's broadcast equals each rank's own.
    torch::Tensor rank0 = a.clone();
    MPI_Bcast(rank0.data_ptr<float>(), static_cast<int>(rank0.numel()), MPI_FLOAT, 0,
              MPI_COMM_WORLD);
    EXPECT_TRUE(torch::equal(rank0, a));
    if (world_.comm->rank() == 0) {
      const auto n = static_cast<std::size_t>(a.numel());
      const int p = world_.comm->size();
      EXPECT_EQ(logged_state_bytes(plain_log), n * sizeof(float));
      EXPECT_EQ(logged_state_bytes(o.log_path),
                reduce_scatter_shard(n, p, 0).count * sizeof(float));
      std::printf(
          "[ shard-optimizer ] np %d%s: weights %.3g apart from unsharded (moved %.3g); "
          "optimizer state %zu -> %zu bytes on rank 0\n",
          p, nesterov ? " nesterov" : "", rel, moved, n * sizeof(float),
          reduce_scatter_shard(n, p, 0).count * sizeof(float));
    }
  }
}

// Compressed (1-bit with error feedback, QSGD): the training learns and the ranks agree.
TEST_F(ShardMpi, CompressedShardedLearns) {
  const SyntheticDataset train(240, 73), val(64, 74);
  for (const compression::Method method :
       {compression::Method::OneBit, compression::Method::Qsgd}) {
    TrainOptions o = options();
    o.schedule.epochs = 2;
    o.shard_optimizer = true;
    o.sync.compression.method = method;
    const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
    ASSERT_EQ(r.step_losses.size(), 20u);
    EXPECT_LT(r.epochs.back().train_loss, r.step_losses.front());
    EXPECT_EQ(r.epochs.back().skipped_steps, 0);
    const torch::Tensor a = flat_parameters(*r.model);
    EXPECT_TRUE(torch::isfinite(a).all().item<bool>());
    torch::Tensor rank0 = a.clone();
    MPI_Bcast(rank0.data_ptr<float>(), static_cast<int>(rank0.numel()), MPI_FLOAT, 0,
              MPI_COMM_WORLD);
    EXPECT_TRUE(torch::equal(rank0, a));
  }
}

// Each refused combination is InvalidArgument naming --shard-optimizer and what it meets, on
// every rank (every rank checks the options before anything is sent).
TEST_F(ShardMpi, RefusesWhatHasNoShardedForm) {
  const SyntheticDataset train(240, 75), val(64, 76);
  struct Case {
    const char* words;
    void (*apply)(TrainOptions&);
  };
  const Case cases[] = {
      {"--sync bmuf", [](TrainOptions& o) { o.bmuf = true; }},
      {"--momentum-correction", [](TrainOptions& o) { o.sgd.momentum_correction = true; }},
      {"--compress topk",
       [](TrainOptions& o) { o.sync.compression.method = compression::Method::TopK; }},
      {"--compress powersgd", [](TrainOptions& o) { o.sync.powersgd = true; }},
      {"--checkpoint-dir", [](TrainOptions& o) { o.checkpoint_dir = "/tmp/unused"; }},
  };
  for (const Case& c : cases) {
    TrainOptions o = options();
    o.shard_optimizer = true;
    c.apply(o);
    try {
      run_training(*world_.comm, world_.counter, train, val, o, out_);
      ADD_FAILURE() << c.words << ": accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find("--shard-optimizer"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(c.words), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace frugal::train
