// Models, optimizer and checkpoints (single process).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "checkpoint.hpp"
#include "dgc.hpp"
#include "frugal/error.hpp"
#include "models/resnet.hpp"
#include "sgd.hpp"

namespace frugal::train {
namespace {

std::int64_t parameter_count(torch::nn::Module& model) {
  std::int64_t n = 0;
  for (const auto& p : model.parameters()) n += p.numel();
  return n;
}

TEST(Models, CifarResNetParameterCountsAndShapes) {
  // He et al. 2016, table 6: ResNet-20 0.27 M, ResNet-32 0.46 M, ResNet-56 0.85 M (option A).
  auto r20 = make_model({"resnet20", 3, 10});
  EXPECT_EQ(parameter_count(*r20), 269722);
  EXPECT_EQ(parameter_count(*make_model({"resnet32", 3, 10})), 464154);
  EXPECT_EQ(parameter_count(*make_model({"resnet56", 3, 10})), 853018);
  // Fashion-MNIST: one input channel, 28×28.
  auto gray = make_model({"resnet20", 1, 10});
  EXPECT_EQ(parameter_count(*gray), 269722 - 16 * 3 * 9 + 16 * 9);
  torch::NoGradGuard no_grad;
  gray->eval();
  EXPECT_EQ(forward(*gray, torch::randn({2, 1, 28, 28})).sizes(),
            (std::vector<std::int64_t>{2, 10}));
  EXPECT_THROW(make_model({"resnet21", 3, 10}), Error);
  EXPECT_THROW(make_model({"resnet20", 0, 10}), Error);
}

TEST(Models, ImageNetResNetsMatchTorchvision) {
  auto r18 = make_model({"resnet18", 3, 1000});
  EXPECT_EQ(parameter_count(*r18), 11689512);
  EXPECT_EQ(parameter_count(*make_model({"resnet34", 3, 1000})), 21797672);
  auto r50 = make_model({"resnet50", 3, 1000});
  EXPECT_EQ(parameter_count(*r50), 25557032);
  torch::NoGradGuard no_grad;
  r18->eval();
  EXPECT_EQ(forward(*r18, torch::randn({1, 3, 64, 64})).sizes(),
            (std::vector<std::int64_t>{1, 1000}));
  auto small = make_model({"resnet50", 1, 7});
  small->eval();
  EXPECT_EQ(forward(*small, torch::randn({2, 1, 32, 32})).sizes(),
            (std::vector<std::int64_t>{2, 7}));
}

TEST(Models, LastBatchNormOfEveryResidualBlockStartsAtZero) {
  for (const auto& [name, blocks] : {std::pair{"resnet20", 9}, std::pair{"resnet56", 27},
                                     std::pair{"resnet18", 8}, std::pair{"resnet50", 16}}) {
    auto model = make_model({name, 3, 10});
    const auto gammas = zero_init_gammas(*model);
    EXPECT_EQ(static_cast<int>(gammas.size()), blocks) << name;
    for (const auto& g : gammas) EXPECT_EQ(g.abs().max().item<float>(), 0.0f) << name;
    // Every other BN γ starts at one.
    std::int64_t ones = 0;
    for (const auto& item : model->named_parameters()) {
      if (item.key().find("bn") != std::string::npos && item.key().ends_with(".weight") &&
          item.value().abs().max().item<float>() != 0.0f) {
        EXPECT_EQ(item.value().min().item<float>(), 1.0f) << item.key();
        ++ones;
      }
    }
    EXPECT_GT(ones, 0) << name;
  }
}

TEST(Models, ZeroInitResidualOffStartsEveryBatchNormGammaAtOne) {
  for (const char* name : {"resnet20", "resnet18", "resnet50"}) {
    auto model = make_model({name, 3, 10, /*zero_init_residual=*/false});
    const auto gammas = zero_init_gammas(*model);
    ASSERT_FALSE(gammas.empty()) << name;
    for (const auto& g : gammas) {
      EXPECT_EQ(g.min().item<float>(), 1.0f) << name;
      EXPECT_EQ(g.max().item<float>(), 1.0f) << name;
    }
    // So is every other BN γ.
    std::int64_t bn = 0;
    for (const auto& item : model->named_parameters()) {
      if (item.key().find("bn") != std::string::npos && item.key().ends_with(".weight")) {
        EXPECT_EQ(item.value().min().item<float>(), 1.0f) << item.key();
        EXPECT_EQ(item.value().max().item<float>(), 1.0f) << item.key();
        ++bn;
      }
    }
    EXPECT_GT(bn, static_cast<std::int64_t>(gammas.size())) << name;
    // A block no longer starts as the identity, so the same seed gives a different output.
    torch::manual_seed(5);
    auto zero = make_model({name, 3, 10});
    torch::manual_seed(5);
    auto one = make_model({name, 3, 10, false});
    zero->eval();
    one->eval();
    const torch::Tensor x = torch::randn({2, 3, 32, 32});
    EXPECT_FALSE(torch::allclose(forward(*zero, x), forward(*one, x))) << name;
  }
}

TEST(Sgd, MatchesTorchOptimSgd) {
  for (bool nesterov : {false, true}) {
    torch::manual_seed(3);
    torch::Tensor a = torch::randn({5, 4}).requires_grad_();
    torch::Tensor b = a.detach().clone().requires_grad_();
    Sgd ours({{"a", a, true}}, {0.9, nesterov, 1e-2});
    torch::optim::SGD theirs(
        {b}, torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(nesterov).weight_decay(1e-2));
    for (int step = 0; step < 5; ++step) {
      const auto g = torch::randn({5, 4});
      a.mutable_grad() = g.clone();
      b.mutable_grad() = g.clone();
      ours.step(0.1);
      theirs.step();
    }
    EXPECT_LT((a - b).abs().max().item<float>(), 1e-6f) << "nesterov " << nesterov;
  }
  // Exempt parameters get no weight decay: with a zero gradient they do not move.
  torch::Tensor c = torch::ones({3}).requires_grad_();
  Sgd exempt({{"c", c, false}}, {0.9, false, 0.5});
  c.mutable_grad() = torch::zeros({3});
  exempt.step(1.0);
  EXPECT_EQ(c.min().item<float>(), 1.0f);
}

// Momentum correction: two ranks each keep the velocity of their share of the gradient; the sum
// of their directions must step exactly like one optimizer on the summed gradient whose weight
// decay is outside the momentum (p -= lr·(direction + λ·p)), with and without Nesterov, also for
// an exempt parameter.
TEST(Sgd, MomentumCorrectionSumsToTheGlobalUpdate) {
  for (bool nesterov : {false, true}) {
    for (bool decay : {true, false}) {
      torch::manual_seed(5);
      const torch::Tensor init = torch::randn({6, 3});
      torch::Tensor global = init.clone().requires_grad_();
      std::array<torch::Tensor, 2> local = {init.clone().requires_grad_(),
                                            init.clone().requires_grad_()};
      Sgd reference({{"w", global, decay}}, {0.9, nesterov, 0, false});
      std::array<Sgd, 2> ranks = {Sgd({{"w", local[0], decay}}, {0.9, nesterov, 1e-2, true}),
                                  Sgd({{"w", local[1], decay}}, {0.9, nesterov, 1e-2, true})};
      for (int step = 0; step < 6; ++step) {
        std::array<torch::Tensor, 2> share = {torch::randn({6, 3}), torch::randn({6, 3})};
        global.mutable_grad() = share[0] + share[1];
        const double lr = 0.1 / (1 + step);  // the schedule may change the LR every step
        const torch::Tensor decay_term = decay ? global.detach() * 1e-2 : torch::zeros({6, 3});
        reference.step(lr);
        {
          torch::NoGradGuard no_grad;
          global.sub_(decay_term * lr);
        }
        for (int r = 0; r < 2; ++r) ranks[r].accumulate_local(0, share[r], 2);
        const torch::Tensor sum = share[0] + share[1];
        for (int r = 0; r < 2; ++r) {
          local[r].mutable_grad() = sum.clone();
          ranks[r].step(lr);
        }
      }
      for (int r = 0; r < 2; ++r) {
        EXPECT_LT((local[r] - global).abs().max().item<float>(), 1e-6f)
            << "nesterov " << nesterov << " decay " << decay << " rank " << r;
      }
      // The ranks' velocities differ (each holds its own share), and sum to the global one.
      EXPECT_GT((ranks[0].momentum()[0] - ranks[1].momentum()[0]).abs().max().item<float>(), 0.1f);
      EXPECT_LT((ranks[0].momentum()[0] + ranks[1].momentum()[0] - reference.momentum()[0])
                    .abs()
                    .max()
                    .item<float>(),
                1e-5f);
    }
  }
  // Asking for local accumulation without momentum correction (or momentum) is refused.
  torch::Tensor w = torch::zeros({2}).requires_grad_();
  Sgd plain({{"w", w, true}}, {0.9, false, 0, false});
  torch::Tensor g = torch::ones({2});
  EXPECT_THROW(plain.accumulate_local(0, g, 2), Error);
  EXPECT_THROW(Sgd({{"w", w, true}}, {0.0, false, 0, true}), Error);
}

// DGC's sparsity warm-up: with target density 0.001 over 4 epochs, its published 75%, 93.75%,
// 98.4375% and 99.6% sparsity, then the target; counted from the first compressed epoch.
TEST(Dgc, DensityWarmupIsDgcsExponentialRamp) {
  const double expected[] = {0.25, 0.0625, 0.015625, 0.004, 0.001, 0.001};
  for (int e = 0; e < 6; ++e) {
    EXPECT_NEAR(warmup_density(0.001, e, 4), expected[e], 0.02 * expected[e]) << "epoch " << e;
  }
  EXPECT_EQ(warmup_density(0.01, 0, 0), 0.01);                      // off
  EXPECT_EQ(warmup_density(0.01, -1, 2), std::pow(0.01, 1.0 / 3));  // clamped, never denser
  EXPECT_THROW(warmup_density(0.01, 0, -1), Error);
  EXPECT_THROW(warmup_density(0, 0, 2), Error);
}

// Momentum factor masking zeroes exactly the entries whose residual is 0 (sent), and leaves
// parameters without a residual (reduced dense) alone.
TEST(Dgc, MaskZeroesTheSentVelocityEntries) {
  std::vector<torch::Tensor> velocity = {torch::tensor({1.0f, 2.0f, 3.0f}), torch::ones({2})};
  const std::vector<torch::Tensor> residuals = {torch::tensor({0.5f, 0.0f, -1.0f}),
                                                torch::Tensor()};
  mask_velocity(velocity, residuals);
  EXPECT_TRUE(torch::equal(velocity[0], torch::tensor({1.0f, 0.0f, 3.0f})));
  EXPECT_TRUE(torch::equal(velocity[1], torch::ones({2})));
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() / ("frugal-ckpt-test-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::vector<Sgd::Param> params_of(torch::nn::Module& m) {
    std::vector<Sgd::Param> out;
    for (const auto& item : m.named_parameters()) out.push_back({item.key(), item.value(), true});
    return out;
  }

  std::filesystem::path dir_;
};

TEST_F(CheckpointTest, RoundTripRestoresModelMomentumStateAndRng) {
  torch::manual_seed(1);
  auto model = make_model({"resnet20", 1, 10});
  Sgd sgd(params_of(*model), {});
  for (auto& p : model->parameters()) p.mutable_grad() = torch::randn_like(p);
  sgd.step(0.1);
  // Make a BN buffer non-trivial.
  model->named_buffers()["bn1.running_mean"].fill_(0.25);
  const std::vector<std::byte> ef = {std::byte{1}, std::byte{2}, std::byte{3}};
  const CheckpointMeta meta{3, 120, 7, 2, "resnet20"};
  save_checkpoint(checkpoint_path(dir_, 3, 0), meta, *model, sgd, ef);
  commit_checkpoint(dir_, 3);
  const auto after_save = torch::rand({4});  // generator state moved on after the save

  torch::manual_seed(99);
  auto other = make_model({"resnet20", 1, 10});
  Sgd other_sgd(params_of(*other), {});
  std::vector<std::byte> loaded_ef;
  ASSERT_EQ(latest_checkpoint(dir_), std::optional<std::int64_t>(3));
  const CheckpointMeta got =
      load_checkpoint(checkpoint_path(dir_, 3, 0), meta, *other, other_sgd, loaded_ef);
  EXPECT_EQ(got.epochs_done, 3);
  EXPECT_EQ(got.step, 120);
  EXPECT_EQ(loaded_ef, ef);
  auto a = model->named_parameters();
  auto b = other->named_parameters();
  for (const auto& item : a) EXPECT_TRUE(torch::equal(item.value(), b[item.key()])) << item.key();
  EXPECT_TRUE(torch::equal(model->named_buffers()["bn1.running_mean"],
                           other->named_buffers()["bn1.running_mean"]));
  for (std::size_t i = 0; i < sgd.momentum().size(); ++i) {
    ASSERT_TRUE(other_sgd.momentum()[i].defined());
    EXPECT_TRUE(torch::equal(sgd.momentum()[i], other_sgd.momentum()[i]));
  }
  EXPECT_TRUE(torch::equal(torch::rand({4}), after_save));  // RNG state restored

  // Another model, world size or seed is refused with a message naming the file.
  CheckpointMeta wrong = meta;
  wrong.world_size = 4;
  EXPECT_THROW(load_checkpoint(checkpoint_path(dir_, 3, 0), wrong, *other, other_sgd, loaded_ef),
               Error);
  // Rank-local velocities (--momentum-correction) never load as global ones, nor the reverse.
  CheckpointMeta local_kind = meta;
  local_kind.local_momentum = true;
  try {
    load_checkpoint(checkpoint_path(dir_, 3, 0), local_kind, *other, other_sgd, loaded_ef);
    FAIL() << "global momentum loaded into a momentum-correction run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--momentum-correction"), std::string::npos) << e.what();
  }
  save_checkpoint(checkpoint_path(dir_, 4, 0), local_kind, *model, sgd, ef);
  EXPECT_THROW(load_checkpoint(checkpoint_path(dir_, 4, 0), meta, *other, other_sgd, loaded_ef),
               Error);
  EXPECT_TRUE(load_checkpoint(checkpoint_path(dir_, 4, 0), local_kind, *other, other_sgd, loaded_ef)
                  .local_momentum);
  auto bigger = make_model({"resnet32", 1, 10});
  Sgd bigger_sgd(params_of(*bigger), {});
  CheckpointMeta r32 = meta;
  r32.model = "resnet32";
  EXPECT_THROW(load_checkpoint(checkpoint_path(dir_, 3, 0), r32, *bigger, bigger_sgd, loaded_ef),
               Error);
}

TEST_F(CheckpointTest, LeftoversAndTornFilesDoNotBreakTheLastGoodCheckpoint) {
  auto model = make_model({"resnet20", 1, 10});
  Sgd sgd(params_of(*model), {});
  const CheckpointMeta meta{1, 10, 0, 1, "resnet20"};
  save_checkpoint(checkpoint_path(dir_, 1, 0), meta, *model, sgd, {});
  commit_checkpoint(dir_, 1);
  // A crash while writing epoch 2: a temporary file and a truncated epoch-2 file, no commit.
  const auto good = std::filesystem::file_size(checkpoint_path(dir_, 1, 0));
  std::filesystem::copy_file(checkpoint_path(dir_, 1, 0), dir_ / ".ckpt-e2.rank0.pt.tmp.1234");
  std::filesystem::copy_file(checkpoint_path(dir_, 1, 0), checkpoint_path(dir_, 2, 0));
  std::filesystem::resize_file(checkpoint_path(dir_, 2, 0), good / 2);
  std::filesystem::resize_file(dir_ / ".ckpt-e2.rank0.pt.tmp.1234", good / 3);

  ASSERT_EQ(latest_checkpoint(dir_), std::optional<std::int64_t>(1));
  std::vector<std::byte> ef;
  EXPECT_EQ(load_checkpoint(checkpoint_path(dir_, 1, 0), meta, *model, sgd, ef).epochs_done, 1);
  // The torn file itself is reported, naming it, not loaded.
  try {
    load_checkpoint(checkpoint_path(dir_, 2, 0), meta, *model, sgd, ef);
    FAIL() << "a truncated checkpoint loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(e.what()).find("ckpt-e2.rank0.pt"), std::string::npos) << e.what();
  }
  // After the next good commit the old files of this rank go away.
  save_checkpoint(checkpoint_path(dir_, 2, 0), {2, 20, 0, 1, "resnet20"}, *model, sgd, {});
  commit_checkpoint(dir_, 2);
  remove_old_checkpoints(dir_, 2, 0);
  EXPECT_FALSE(std::filesystem::exists(checkpoint_path(dir_, 1, 0)));
  EXPECT_FALSE(std::filesystem::exists(dir_ / ".ckpt-e2.rank0.pt.tmp.1234"));  // the torn write
  EXPECT_TRUE(std::filesystem::exists(checkpoint_path(dir_, 2, 0)));
  EXPECT_EQ(load_checkpoint(checkpoint_path(dir_, 2, 0), meta, *model, sgd, ef).epochs_done, 2);
  // A malformed pointer is an error, not a silent fresh start.
  std::ofstream(dir_ / "latest") << "two\n";
  EXPECT_THROW(latest_checkpoint(dir_), Error);
}

}  // namespace
}  // namespace frugal::train
