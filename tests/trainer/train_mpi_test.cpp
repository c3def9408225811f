// The training loop under mpirun -np 2 on a synthetic dataset (no files): the 2-rank run equals
// the 1-rank run, every compression method learns and logs every field, resume continues the
// same run, and a non-finite gradient skips the step on every rank; --sync bmuf with one-step
// blocks equals synchronous SGD, longer blocks send fewer bytes, and its resume continues too.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include "counting_transport.hpp"
#include "data/dataset.hpp"
#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/mpi.hpp"
#include "gradient_sync.hpp"
#include "models/resnet.hpp"
#include "synthetic_training.hpp"
#include "trainer.hpp"

namespace frugal::train {
namespace {

using testing::Counted;
using testing::counted_communicator;
using testing::flat_parameters;
using testing::small_options;
using testing::SyntheticDataset;

int world_rank() {
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  return rank;
}

// ||a - reference|| / ||reference|| over all parameters.
double relative_difference(torch::nn::Module& a, torch::nn::Module& reference) {
  const torch::Tensor r = flat_parameters(reference);
  return ((flat_parameters(a) - r).norm() / r.norm()).item<double>();
}

std::filesystem::path temp_dir(const std::string& name) {
  // Rank 0 picks the name so that both ranks use one directory.
  return std::filesystem::temp_directory_path() / ("frugal-train-test-" + name);
}

class TrainMpi : public ::testing::Test {
 protected:
  void SetUp() override {
    torch::set_num_threads(1);
    world_ = counted_communicator(MPI_COMM_WORLD);
    ASSERT_EQ(world_.comm->size(), 2) << "run under mpirun -np 2";
  }
  Counted world_;
  std::ostringstream out_;
};

TEST_F(TrainMpi, TwoRanksWithHalfTheBatchEqualOneRankWithTheWholeBatch) {
  const SyntheticDataset train(320, 1), val(64, 2);
  TrainOptions o = small_options(1);
  o.freeze_bn = true;  // BN statistics would otherwise depend on the per-rank batch
  o.sgd.nesterov = true;
  o.label_smoothing = 0.1;
  o.no_wd_bn_bias = true;
  o.max_local_batch = 4;  // 2 micro-batches per rank: accumulation is part of the comparison
  const RunResult two = run_training(*world_.comm, world_.counter, train, val, o, out_);
  ASSERT_EQ(two.epochs.size(), 1u);
  ASSERT_EQ(two.epochs[0].steps, 20);
  const torch::Tensor distributed = flat_parameters(*two.model);

  if (world_rank() == 0) {
    Counted self = counted_communicator(MPI_COMM_SELF);
    o.max_local_batch = 0;
    const RunResult one = run_training(*self.comm, self.counter, train, val, o, out_);
    ASSERT_EQ(one.epochs[0].steps, 20);
    const torch::Tensor reference = flat_parameters(*one.model);
    const double rel = ((distributed - reference).norm() / reference.norm()).item<double>();
    EXPECT_LE(rel, 1e-4) << "relative difference of the weights after 20 steps";
    // The weights did move: the comparison is not between two initialisations.
    torch::manual_seed(o.seed);
    const auto init = make_model({o.model, 1, 4});
    const double moved =
        ((reference - flat_parameters(*init)).norm() / reference.norm()).item<double>();
    EXPECT_GT(moved, 1e-3);
    std::printf("[ equivalence ] relative weight difference %.3g after 20 steps (moved %.3g)\n",
                rel, moved);
  }
}

// --momentum-correction: with a dense allreduce the sum of the ranks' velocities is the global
// velocity, so the training is the same; with compression it is a different training. Weight
// decay stays out of the corrected velocities (Sgd's own test checks where it goes), so the
// dense comparison is without it.
TEST_F(TrainMpi, MomentumCorrectionKeepsDenseTrainingAndChangesCompressedTraining) {
  const SyntheticDataset train(320, 11), val(64, 12);
  TrainOptions o = small_options(1);
  o.sgd.weight_decay = 0;
  o.sgd.nesterov = true;
  o.no_wd_bn_bias = true;
  o.max_local_batch = 4;  // the velocity must take the accumulated gradient, not one micro-batch
  const RunResult global = run_training(*world_.comm, world_.counter, train, val, o, out_);
  o.sgd.momentum_correction = true;
  const RunResult local = run_training(*world_.comm, world_.counter, train, val, o, out_);
  const double rel = relative_difference(*local.model, *global.model);
  EXPECT_LE(rel, 1e-5) << "dense training with momentum correction differs";

  o.sgd.nesterov = false;
  o.sgd.weight_decay = 5e-4;
  o.max_local_batch = 0;
  o.sync.compression.method = compression::Method::OneBit;
  const RunResult corrected = run_training(*world_.comm, world_.counter, train, val, o, out_);
  o.sgd.momentum_correction = false;
  const RunResult uncorrected = run_training(*world_.comm, world_.counter, train, val, o, out_);
  const double apart = relative_difference(*corrected.model, *uncorrected.model);
  EXPECT_GT(apart, 1e-3) << "momentum correction had no effect under 1-bit compression";
  EXPECT_LT(corrected.epochs[0].train_loss, corrected.step_losses.front());
  if (world_rank() == 0) {
    std::printf("[ momentum correction ] dense: relative difference %.3g; 1-bit: %.3g apart\n", rel,
                apart);
  }
}

// --dense-vectors: a compressed step sends 1-D parameters exactly (the sum of the ranks'
// gradients) while 2-D weights still go through the compressor.
TEST_F(TrainMpi, DenseVectorsBypassCompression) {
  for (const bool dense_vectors : {false, true}) {
    SCOPED_TRACE(dense_vectors ? "dense vectors" : "everything compressed");
    torch::manual_seed(21);  // the same parameters on both ranks
    const torch::Tensor w0 = torch::randn({16, 32}), b0 = torch::randn({16});
    torch::manual_seed(100 + world_rank());  // different data on each rank
    const torch::Tensor x = torch::randn({8, 32});
    const auto loss = [&](const torch::Tensor& w, const torch::Tensor& b) {
      return (torch::matmul(x, w.t()) + b).pow(2).sum();
    };
    // The exact sums, computed apart from the sync.
    torch::Tensor w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
    loss(w, b).backward();
    torch::Tensor exact_w = w.grad().clone().contiguous(), exact_b = b.grad().clone().contiguous();
    MPI_Allreduce(MPI_IN_PLACE, exact_w.data_ptr<float>(), static_cast<int>(exact_w.numel()),
                  MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, exact_b.data_ptr<float>(), static_cast<int>(exact_b.numel()),
                  MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);

    w = w0.clone().requires_grad_();
    b = b0.clone().requires_grad_();
    SyncOptions options;
    options.compression.method = compression::Method::OneBit;
    options.dense_vectors = dense_vectors;
    GradientSync sync(*world_.comm, {{"w", w}, {"b", b}}, options);
    sync.begin_step(true);
    loss(w, b).backward();
    ASSERT_TRUE(sync.end_step());
    const float b_error = (b.grad() - exact_b).abs().max().item<float>();
    const float w_error = (w.grad() - exact_w).abs().max().item<float>();
    const float b_scale = exact_b.abs().max().item<float>();
    if (dense_vectors) {
      EXPECT_LE(b_error, 1e-5f * b_scale);
    } else {
      EXPECT_GT(b_error, 1e-2f * b_scale);
    }
    EXPECT_GT(w_error, 1e-2f * exact_w.abs().max().item<float>());  // 1-bit either way
  }
  // A model of vectors only would leave nothing to compress: refused, naming the option.
  SyncOptions options;
  options.compression.method = compression::Method::OneBit;
  options.dense_vectors = true;
  torch::Tensor only = torch::zeros({4}).requires_grad_();
  try {
    GradientSync sync(*world_.comm, {{"only", only}}, options);
    FAIL() << "a sync with nothing to compress was built";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--dense-vectors"), std::string::npos) << e.what();
  }
}

// A NaN in one rank's gradient skips the step on every rank and leaves no trace: the step after
// it reduces exactly what it would have had the bad step never run. Top-k keeps a residual that
// a NaN would poison; with --dense-vectors a NaN in a bypassing vector is found only after the
// compressed buckets have reduced, so their progress must be undone.
TEST_F(TrainMpi, GradientSyncSkipsANonFiniteStepWithoutTrace) {
  torch::manual_seed(31);  // the same parameters on both ranks
  const torch::Tensor w0 = torch::randn({16, 32}), b0 = torch::randn({16});
  const int rank = world_rank();
  struct Reduced {
    torch::Tensor w, b;
  };
  // Runs the given steps on a fresh sync; `poison` (if set) gets a NaN gradient on rank 1 in
  // step 1. Returns the gradients of the last step.
  const auto run = [&](const std::vector<int>& steps, const char* poison,
                       bool* skipped) -> Reduced {
    torch::Tensor w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
    SyncOptions options;
    options.compression.method = compression::Method::TopK;
    options.compression.density = 0.1;
    options.dense_vectors = true;
    GradientSync sync(*world_.comm, {{"w", w}, {"b", b}}, options);
    Reduced last;
    for (const int step : steps) {
      torch::manual_seed(1000 * static_cast<std::uint64_t>(step) +
                         static_cast<std::uint64_t>(rank));
      const torch::Tensor x = torch::randn({8, 32});
      sync.begin_step(true);
      torch::Tensor loss = (torch::matmul(x, w.t()) + b).pow(2).sum();
      if (poison != nullptr && step == 1 && rank == 1) {
        loss = loss + ((std::string(poison) == "w" ? w.sum() : b.sum()) * NAN);
      }
      loss.backward();
      const bool ok = sync.end_step();
      if (step == 1 && poison != nullptr) {
        *skipped = !ok;
        EXPECT_FALSE(w.grad().defined() || b.grad().defined()) << "a skipped step left a .grad";
        continue;
      }
      EXPECT_TRUE(ok) << "step " << step;
      last = {w.grad().clone(), b.grad().clone()};
      EXPECT_TRUE(torch::isfinite(last.w).all().item<bool>()) << "step " << step;
    }
    return last;
  };
  const Reduced clean = run({0, 2, 3}, nullptr, nullptr);
  for (const char* poison : {"w", "b"}) {
    SCOPED_TRACE(std::string("NaN in ") + poison);
    bool skipped = false;
    const Reduced after = run({0, 1, 2, 3}, poison, &skipped);
    EXPECT_TRUE(skipped) << "rank " << rank << " did not skip the step";
    EXPECT_TRUE(torch::equal(after.w, clean.w)) << "the skipped step changed the residuals";
    EXPECT_TRUE(torch::equal(after.b, clean.b));
  }
}

std::vector<std::string> json_lines(const std::filesystem::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

TEST_F(TrainMpi, EveryMethodLearnsAndLogsEveryField) {
  const SyntheticDataset train(256, 3), val(64, 4);
  const auto dir = temp_dir("methods");
  if (world_rank() == 0) std::filesystem::create_directories(dir);
  using compression::Method;
  double dense_bytes_per_step = 0;
  for (const Method method : {Method::None, Method::Fp16, Method::Bf16, Method::TopK,
                              Method::OneBit, Method::Ternary, Method::Qsgd}) {
    SCOPED_TRACE(std::string(compression::to_string(method)));
    TrainOptions o = small_options(1);
    o.schedule.global_batch = 32;
    o.schedule.ref_batch = 32;
    o.schedule.epochs = 3;
    o.sync.compression.method = method;
    o.sync.compression.density = 0.05;
    o.log_every = 4;
    o.log_path = (dir / (std::string(compression::to_string(method)) + ".jsonl")).string();
    const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
    ASSERT_EQ(r.epochs.size(), 3u);
    if (world_rank() == 0) {
      std::printf("[ %-8s ] train loss %.4f -> %.4f, val top-1 %.3f, %.0f wire bytes/step\n",
                  std::string(compression::to_string(method)).c_str(), r.epochs.front().train_loss,
                  r.epochs.back().train_loss, r.epochs.back().val_top1,
                  static_cast<double>(r.epochs.back().wire_bytes) /
                      static_cast<double>(r.epochs.back().steps));
    }
    // Chance is a loss of ln 4 = 1.386 and a top-1 of 0.25.
    EXPECT_LT(r.epochs.back().train_loss, 0.95 * r.epochs.front().train_loss);
    EXPECT_GT(r.epochs.back().val_top1, 0.4);
    const double per_step = static_cast<double>(r.epochs.back().wire_bytes) /
                            static_cast<double>(r.epochs.back().steps);
    EXPECT_GT(per_step, 0);
    if (method == Method::None) {
      dense_bytes_per_step = per_step;
    } else {
      EXPECT_LT(per_step, 0.75 * dense_bytes_per_step);
    }
    if (world_rank() != 0) continue;
    const auto lines = json_lines(o.log_path);
    // 8 steps per epoch, a step record every 4: 2 + 1 epoch record per epoch.
    ASSERT_EQ(lines.size(), 9u);
    int epochs = 0;
    for (const std::string& line : lines) {
      for (const char* field :
           {"\"epoch\":", "\"step\":", "\"lr\":", "\"global_batch\":32",
            "\"train_loss\":", "\"train_top1\":", "\"val_loss\":", "\"val_top1\":", "\"val_top5\":",
            "\"images_per_sec\":", "\"wire_bytes\":", "\"data_s\":", "\"compute_s\":",
            "\"comm_wait_s\":", "\"optimizer_s\":"}) {
        EXPECT_NE(line.find(field), std::string::npos) << field << " missing in " << line;
      }
      if (line.find("\"kind\":\"epoch\"") != std::string::npos) {
        ++epochs;
        EXPECT_EQ(line.find("null"), std::string::npos) << line;
      }
    }
    EXPECT_EQ(epochs, 3);
  }
  if (world_rank() == 0) std::filesystem::remove_all(dir);
}

TEST_F(TrainMpi, ResumeContinuesTheSameRun) {
  const SyntheticDataset train(128, 5), val(32, 6);
  const auto whole = temp_dir("resume-whole");
  const auto parts = temp_dir("resume-parts");
  if (world_rank() == 0) {
    std::filesystem::remove_all(whole);
    std::filesystem::remove_all(parts);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  for (const bool correction : {false, true}) {
    TrainOptions o = small_options(1);
    o.schedule.epochs = 2;
    o.schedule.lr_steps = {1};                                // the LR changes at the resume point
    o.sync.compression.method = compression::Method::OneBit;  // error feedback must be restored too
    o.sgd.momentum_correction = correction;                   // then each rank's own velocity too
    o.checkpoint_dir = (whole / (correction ? "local" : "global")).string();
    const RunResult uninterrupted = run_training(*world_.comm, world_.counter, train, val, o, out_);
    ASSERT_EQ(uninterrupted.step_losses.size(), 16u);

    o.checkpoint_dir = (parts / (correction ? "local" : "global")).string();
    o.schedule.epochs = 1;
    run_training(*world_.comm, world_.counter, train, val, o, out_);
    o.schedule.epochs = 2;
    o.resume = true;
    const RunResult resumed = run_training(*world_.comm, world_.counter, train, val, o, out_);
    ASSERT_EQ(resumed.epochs.size(), 1u);
    ASSERT_EQ(resumed.step_losses.size(), 8u);
    EXPECT_EQ(resumed.epochs[0].epoch, 1);
    for (std::size_t i = 0; i < 8; ++i) {
      EXPECT_NEAR(resumed.step_losses[i], uninterrupted.step_losses[8 + i],
                  1e-5 * std::abs(uninterrupted.step_losses[8 + i]))
          << "step " << 8 + i << " correction " << correction;
    }
    EXPECT_LT(relative_difference(*resumed.model, *uninterrupted.model), 1e-5)
        << "correction " << correction;
    // The resumed run rescales the residuals at the LR drop as the uninterrupted one does.
    ASSERT_EQ(resumed.residual_scales.size(), 8u);
    EXPECT_NEAR(resumed.residual_scales[0], 10.0, 1e-9);
    for (std::size_t i = 0; i < 8; ++i) {
      EXPECT_EQ(resumed.residual_scales[i], uninterrupted.residual_scales[8 + i]) << "step " << i;
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    std::filesystem::remove_all(whole);
    std::filesystem::remove_all(parts);
  }
}

// Error feedback follows the LR: before every compressed step the residuals, collected at the
// previous step's LR, are scaled by lr_prev / lr_now — through a warmup (every step, < 1), the
// end of warmup, a step decay (10 at the milestone) and constant stretches (1). A dense first
// epoch has no residual to scale.
TEST_F(TrainMpi, ErrorFeedbackResidualsFollowWarmupAndStepDecay) {
  const SyntheticDataset train(128, 11), val(32, 12);
  TrainOptions o = small_options(1);
  o.schedule.epochs = 4;
  o.schedule.ref_batch = 8;  // scaled LR 2 × base: warmup rises from 0.05 to 0.1
  o.schedule.warmup_epochs = 2;
  o.schedule.lr_steps = {3};
  o.sync.compression.method = compression::Method::OneBit;
  o.compress_after_epochs = 1;
  o.limit_val = 32;
  const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
  const std::int64_t steps = 8;  // 128 examples, global batch 16
  ASSERT_EQ(r.residual_scales.size(), static_cast<std::size_t>(4 * steps));
  for (std::int64_t k = 0; k < 4 * steps; ++k) {
    const std::int64_t epoch = k / steps, s = k % steps;
    const double lr = learning_rate(o.schedule, epoch, s, steps);
    const double before =
        k == 0 ? lr : learning_rate(o.schedule, (k - 1) / steps, (k - 1) % steps, steps);
    const double expected = epoch < o.compress_after_epochs ? 1.0 : before / lr;
    EXPECT_DOUBLE_EQ(r.residual_scales[static_cast<std::size_t>(k)], expected) << "step " << k;
  }
  EXPECT_DOUBLE_EQ(r.residual_scales[1], 1.0);  // dense epoch: nothing to scale
  for (std::int64_t k = steps; k <= 2 * steps; ++k) {
    EXPECT_LT(r.residual_scales[static_cast<std::size_t>(k)], 1.0) << "warmup, step " << k;
  }
  EXPECT_DOUBLE_EQ(r.residual_scales[2 * steps + 1], 1.0);  // constant LR
  EXPECT_NEAR(r.residual_scales[3 * steps], 10.0, 1e-9);    // decay by 0.1
}

TEST_F(TrainMpi, GrowingBatchWithAccumulationKeepsTheGlobalBatchExact) {
  const SyntheticDataset train(256, 9), val(32, 10);
  const auto dir = temp_dir("growth");
  if (world_rank() == 0) std::filesystem::create_directories(dir);
  TrainOptions o = small_options(1);
  o.schedule.epochs = 2;
  o.schedule.decay = Decay::None;
  o.schedule.batch_stages = {{0, 16}, {1, 64}};
  o.max_local_batch = 8;  // epoch 1: 32 per rank in 4 micro-batches
  o.log_path = (dir / "growth.jsonl").string();
  const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
  ASSERT_EQ(r.epochs.size(), 2u);
  EXPECT_EQ(r.epochs[0].steps, 16);
  EXPECT_EQ(r.epochs[1].steps, 4);
  EXPECT_LT(r.epochs[1].train_loss, r.epochs[0].train_loss);
  if (world_rank() == 0) {
    const auto lines = json_lines(o.log_path);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_NE(lines[0].find("\"global_batch\":16,"), std::string::npos) << lines[0];
    EXPECT_NE(lines[1].find("\"global_batch\":64,"), std::string::npos) << lines[1];
    // The LR does not grow with the batch (it replaces decay).
    EXPECT_NE(lines[1].find("\"lr\":0.05,"), std::string::npos) << lines[1];
    std::filesystem::remove_all(dir);
  }
}

TEST_F(TrainMpi, NonFiniteGradientSkipsTheStepOnEveryRank) {
  // Index 7 is one rank's example in some step of epoch 0: that rank's gradient is NaN.
  const SyntheticDataset train(128, 7, 7), val(32, 8);
  for (const bool correction : {false, true}) {
    SCOPED_TRACE(correction ? "momentum correction" : "global momentum");
    TrainOptions o = small_options(1);
    o.schedule.epochs = 2;
    o.sync.compression.method = compression::Method::OneBit;
    o.sgd.momentum_correction = correction;  // the NaN reaches the velocity before the skip
    const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
    ASSERT_EQ(r.epochs.size(), 2u);
    EXPECT_EQ(r.epochs[0].skipped_steps, 1);
    EXPECT_EQ(r.epochs[1].skipped_steps, 1);
    // Every rank counted the same skips (the decision is collective).
    int skipped = static_cast<int>(r.epochs[0].skipped_steps), max_skipped = 0, min_skipped = 0;
    MPI_Allreduce(&skipped, &max_skipped, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(&skipped, &min_skipped, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    EXPECT_EQ(max_skipped, min_skipped);
    // The other steps trained and the weights (and so the error feedback) stayed finite.
    EXPECT_TRUE(torch::isfinite(flat_parameters(*r.model)).all().item<bool>());
    // So did the BN running statistics of the skipped step (validation uses them).
    EXPECT_TRUE(std::isfinite(r.epochs[1].val_loss));
    EXPECT_GT(r.epochs[1].val_top1, 0.3);  // chance: 0.25
  }
}

}  // namespace
}  // namespace frugal::train

namespace frugal::train {
namespace {

// The epoch records' wire_bytes in a JSON log (rank 0 writes it), in order.
std::vector<std::uint64_t> epoch_wire_bytes(const std::filesystem::path& log) {
  std::vector<std::uint64_t> bytes;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"kind\":\"epoch\"") == std::string::npos) continue;
    const std::size_t at = line.find("\"wire_bytes\":");
    if (at == std::string::npos) continue;
    bytes.push_back(std::stoull(line.substr(at + 13)));
  }
  return bytes;
}

// --sync bmuf --block-steps 1 --block-momentum 0 --block-lr 1 is synchronous SGD: each rank
// steps from the common weights with its own mean gradient and the models are averaged, which is
// the step with the mean gradient, momentum included (every rank keeps its own buffer; the
// update is linear in weights, velocity and gradient, and the mean of the velocities is the
// synchronous velocity). Not bit for bit: the ranks average models, w − lr·g, and Bmuf takes
// the difference to the block start again, which rounds lr·g to the ulp of w (a relative error
// of ~1e-6 per step here, where |lr·g| is ~1e-3 of |w|); over 20 steps the weights stay within
// 1e-4 of each other and the losses within 1e-4 relative.
TEST_F(TrainMpi, BmufWithOneStepBlocksEqualsSynchronousSgd) {
  const SyntheticDataset train(320, 31), val(64, 32);
  for (const double momentum : {0.0, 0.9}) {
    SCOPED_TRACE(momentum == 0 ? "plain SGD" : "momentum 0.9");
    TrainOptions o = small_options(1);
    o.sgd.momentum = momentum;
    const RunResult sync = run_training(*world_.comm, world_.counter, train, val, o, out_);
    o.bmuf = true;  // block_steps 1, block_momentum 0, block_lr 1
    const RunResult bmuf = run_training(*world_.comm, world_.counter, train, val, o, out_);
    ASSERT_EQ(sync.step_losses.size(), 20u);
    ASSERT_EQ(bmuf.step_losses.size(), 20u);
    for (std::size_t i = 0; i < 20; ++i) {
      EXPECT_NEAR(bmuf.step_losses[i], sync.step_losses[i], 1e-4 * std::abs(sync.step_losses[i]))
          << "step " << i;
    }
    const double rel = relative_difference(*bmuf.model, *sync.model);
    EXPECT_LT(rel, 1e-4);
    EXPECT_EQ(bmuf.epochs[0].blocks, 20);
    EXPECT_GT(bmuf.epochs[0].block_bytes, 0u);
    EXPECT_EQ(sync.epochs[0].blocks, 0);
    // The models did move apart from where they started: the losses are not all the first one.
    EXPECT_LT(sync.epochs[0].train_loss, sync.step_losses.front());
    if (world_rank() == 0) {
      std::printf(
          "[ bmuf H=1 ] momentum %.1f: weights %.3g apart from synchronous SGD (loss "
          "%.4f -> %.4f)\n",
          momentum, rel, sync.step_losses.front(), sync.step_losses.back());
    }
  }
}

// Blocks of 4 steps send a quarter of the bytes of blocks of 1 (20 steps: 5 blocks against 20),
// as the JSON log's epoch records say; with a 1-bit delta far fewer still.
TEST_F(TrainMpi, BmufBlocksOfFourSendAQuarterOfTheBytes) {
  const SyntheticDataset train(320, 41), val(64, 42);
  const auto dir = temp_dir("bmuf-bytes");
  if (world_rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  std::vector<std::uint64_t> bytes;
  for (const auto& [steps, method] :
       {std::pair{1, compression::Method::None}, std::pair{4, compression::Method::None},
        std::pair{4, compression::Method::OneBit}}) {
    TrainOptions o = small_options(1);
    o.bmuf = true;
    o.block_steps = static_cast<std::size_t>(steps);
    o.block_momentum = 0.5;
    o.sync.compression.method = method;
    o.log_path = (dir / ("log" + std::to_string(bytes.size()) + ".jsonl")).string();
    const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
    EXPECT_EQ(r.epochs[0].blocks, 20 / steps);
    if (world_rank() == 0) {
      const std::vector<std::uint64_t> logged = epoch_wire_bytes(o.log_path);
      ASSERT_EQ(logged.size(), 1u);
      EXPECT_EQ(logged[0], r.epochs[0].wire_bytes);
      bytes.push_back(logged[0]);
    }
  }
  if (world_rank() == 0) {
    const double ratio = static_cast<double>(bytes[0]) / static_cast<double>(bytes[1]);
    EXPECT_GT(ratio, 3.8);
    EXPECT_LT(ratio, 4.2);
    EXPECT_LT(bytes[2] * 8, bytes[1]) << "the 1-bit delta should be far smaller";
    std::printf("[ bmuf bytes ] per epoch: H=1 %llu, H=4 %llu (%.2fx fewer), H=4 1-bit %llu\n",
                static_cast<unsigned long long>(bytes[0]),
                static_cast<unsigned long long>(bytes[1]), ratio,
                static_cast<unsigned long long>(bytes[2]));
    std::filesystem::remove_all(dir);
  }
}

// A resumed --sync bmuf run continues as the uninterrupted one: the filter state (W, Δ, block
// counter, the 1-bit delta's residuals) and each rank's own momentum come back.
TEST_F(TrainMpi, BmufResumeContinuesTheSameRun) {
  const SyntheticDataset train(128, 51), val(32, 52);
  const auto whole = temp_dir("bmuf-resume-whole");
  const auto parts = temp_dir("bmuf-resume-parts");
  if (world_rank() == 0) {
    std::filesystem::remove_all(whole);
    std::filesystem::remove_all(parts);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  TrainOptions o = small_options(1);
  o.schedule.epochs = 2;
  o.bmuf = true;
  o.block_steps = 3;  // 8 steps per epoch: blocks of 3, 3 and 2
  o.block_momentum = 0.5;
  o.nesterov_bmuf = true;
  o.sync.compression.method = compression::Method::OneBit;
  o.checkpoint_dir = whole.string();
  const RunResult uninterrupted = run_training(*world_.comm, world_.counter, train, val, o, out_);
  ASSERT_EQ(uninterrupted.step_losses.size(), 16u);
  EXPECT_EQ(uninterrupted.epochs[1].blocks, 3);

  o.checkpoint_dir = parts.string();
  o.schedule.epochs = 1;
  run_training(*world_.comm, world_.counter, train, val, o, out_);
  o.schedule.epochs = 2;
  o.resume = true;
  const RunResult resumed = run_training(*world_.comm, world_.counter, train, val, o, out_);
  ASSERT_EQ(resumed.step_losses.size(), 8u);
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(resumed.step_losses[i], uninterrupted.step_losses[8 + i],
                1e-5 * std::abs(uninterrupted.step_losses[8 + i]))
        << "step " << 8 + i;
  }
  EXPECT_LT(relative_difference(*resumed.model, *uninterrupted.model), 1e-5);

  // Resuming it as --sync sync, or with another block length, is refused by name.
  o.bmuf = false;
  o.block_steps = 1;
  o.block_momentum = 0;
  o.nesterov_bmuf = false;
  o.schedule.epochs = 3;
  try {
    run_training(*world_.comm, world_.counter, train, val, o, out_);
    ADD_FAILURE() << "a --sync bmuf checkpoint resumed as --sync sync";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("--sync must match"), std::string::npos) << e.what();
  }
  o.bmuf = true;
  o.block_steps = 2;
  o.block_momentum = 0.5;
  o.nesterov_bmuf = true;
  try {
    run_training(*world_.comm, world_.counter, train, val, o, out_);
    ADD_FAILURE() << "a checkpoint of blocks of 3 resumed with blocks of 2";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("block_steps"), std::string::npos) << e.what();
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    std::filesystem::remove_all(whole);
    std::filesystem::remove_all(parts);
  }
}

// Per epoch record of a JSON log: wire bytes per step.
std::vector<double> epoch_bytes_per_step(const std::filesystem::path& log) {
  std::vector<double> out;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find("\"kind\":\"epoch\"") == std::string::npos) continue;
    const std::size_t at = line.find("\"wire_bytes_per_step\":");
    if (at == std::string::npos) continue;
    out.push_back(std::stod(line.substr(at + 22)));
  }
  return out;
}

TrainOptions powersgd_options() {
  TrainOptions o = small_options(1);
  o.schedule.global_batch = 32;
  o.schedule.ref_batch = 32;
  o.schedule.epochs = 3;
  o.sync.powersgd = true;
  o.sync.powersgd_options.rank = 2;
  o.sync.powersgd_options.start_iter = 3;  // the first 3 steps exact, then compressed
  return o;
}

// --compress powersgd learns, leaves bit-identical weights on both ranks, and once past its
// exact first steps sends far fewer bytes per step than the dense run (both read from the JSON
// logs, which count what the transport sent).
TEST_F(TrainMpi, PowerSgdLearnsWithFarFewerBytesAndIdenticalWeights) {
  const SyntheticDataset train(256, 3), val(64, 4);
  const auto dir = temp_dir("powersgd");
  if (world_rank() == 0) std::filesystem::create_directories(dir);
  TrainOptions dense = powersgd_options();
  dense.sync.powersgd = false;
  dense.log_path = (dir / "dense.jsonl").string();
  run_training(*world_.comm, world_.counter, train, val, dense, out_);

  TrainOptions o = powersgd_options();
  o.log_path = (dir / "powersgd.jsonl").string();
  const RunResult r = run_training(*world_.comm, world_.counter, train, val, o, out_);
  ASSERT_EQ(r.epochs.size(), 3u);
  // Chance is a loss of ln 4 = 1.386 and a top-1 of 0.25.
  EXPECT_LT(r.epochs.back().train_loss, 0.95 * r.epochs.front().train_loss);
  EXPECT_GT(r.epochs.back().val_top1, 0.4);

  torch::Tensor mine = flat_parameters(*r.model).contiguous();
  torch::Tensor rank0 = mine.clone();
  MPI_Bcast(rank0.data_ptr<float>(), static_cast<int>(rank0.numel()), MPI_FLOAT, 0, MPI_COMM_WORLD);
  EXPECT_TRUE(torch::equal(mine, rank0)) << "the ranks' weights differ";

  if (world_rank() == 0) {
    const std::vector<double> d = epoch_bytes_per_step(dense.log_path);
    const std::vector<double> p = epoch_bytes_per_step(o.log_path);
    ASSERT_EQ(d.size(), 3u);
    ASSERT_EQ(p.size(), 3u);
    std::printf(
        "[ powersgd ] train loss %.4f -> %.4f, val top-1 %.3f; bytes/step dense %.0f, "
        "powersgd r=2 epoch 1 (3 exact steps of 8) %.0f, epoch 3 %.0f\n",
        r.epochs.front().train_loss, r.epochs.back().train_loss, r.epochs.back().val_top1, d.back(),
        p.front(), p.back());
    // ResNet-20 at rank 2: the factors are a few percent of the gradients.
    EXPECT_LT(p.back(), 0.1 * d.back());
    // The first epoch holds the exact steps: it must cost more than the compressed ones.
    EXPECT_GT(p.front(), 2 * p.back());
    std::filesystem::remove_all(dir);
  }
}

// A resumed --compress powersgd run continues as the uninterrupted one: the PowerSgdState (step
// counter, Q's, residuals) comes back from each rank's checkpoint. The resume point falls after
// the exact steps, so the warm-started Q's and the residuals matter.
TEST_F(TrainMpi, PowerSgdResumeContinuesTheSameRun) {
  const SyntheticDataset train(128, 5), val(32, 6);
  const auto whole = temp_dir("powersgd-resume-whole");
  const auto parts = temp_dir("powersgd-resume-parts");
  if (world_rank() == 0) {
    std::filesystem::remove_all(whole);
    std::filesystem::remove_all(parts);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  TrainOptions o = powersgd_options();
  o.schedule.global_batch = 16;
  o.schedule.ref_batch = 16;
  o.schedule.epochs = 2;
  o.checkpoint_dir = whole.string();
  const RunResult uninterrupted = run_training(*world_.comm, world_.counter, train, val, o, out_);
  ASSERT_EQ(uninterrupted.step_losses.size(), 16u);

  o.checkpoint_dir = parts.string();
  o.schedule.epochs = 1;
  run_training(*world_.comm, world_.counter, train, val, o, out_);
  o.schedule.epochs = 2;
  o.resume = true;
  const RunResult resumed = run_training(*world_.comm, world_.counter, train, val, o, out_);
  ASSERT_EQ(resumed.step_losses.size(), 8u);
  for (std::size_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(resumed.step_losses[i], uninterrupted.step_losses[8 + i],
                1e-5 * std::abs(uninterrupted.step_losses[8 + i]))
        << "step " << 8 + i;
  }
  EXPECT_LT(relative_difference(*resumed.model, *uninterrupted.model), 1e-6);
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) {
    std::filesystem::remove_all(whole);
    std::filesystem::remove_all(parts);
  }
}

// --compress powersgd with what it has no use for is refused by name, before any step; and a
// checkpoint of the bucketed exchange does not resume as PowerSGD.
TEST_F(TrainMpi, PowerSgdRefusesWhatDoesNotApply) {
  const SyntheticDataset train(128, 5), val(32, 6);
  const auto expect_refused = [&](const TrainOptions& o, const std::string& name) {
    try {
      run_training(*world_.comm, world_.counter, train, val, o, out_);
      ADD_FAILURE() << "accepted " << name;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  TrainOptions o = powersgd_options();
  o.sgd.momentum_correction = true;
  expect_refused(o, "--momentum-correction");
  o = powersgd_options();
  o.sync.algorithm = AllreduceAlgorithm::TwoPhase;
  expect_refused(o, "--algorithm");
  o = powersgd_options();
  o.bmuf = true;
  expect_refused(o, "powersgd needs --sync sync");
  o = powersgd_options();
  o.sync.powersgd_options.rank = 0;
  expect_refused(o, "rank");

  const auto dir = temp_dir("powersgd-kind");
  if (world_rank() == 0) std::filesystem::remove_all(dir);
  MPI_Barrier(MPI_COMM_WORLD);
  o = powersgd_options();
  o.schedule.epochs = 1;
  o.sync.powersgd = false;
  o.sync.compression.method = compression::Method::OneBit;
  o.checkpoint_dir = dir.string();
  run_training(*world_.comm, world_.counter, train, val, o, out_);
  o.sync.powersgd = true;
  o.sync.compression.method = compression::Method::None;
  o.schedule.epochs = 2;
  o.resume = true;
  expect_refused(o, "--compress powersgd must match");
  MPI_Barrier(MPI_COMM_WORLD);
  if (world_rank() == 0) std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace frugal::train
