// Deep Gradient Compression at two ranks against a serial reference of its update rule: one
// process simulates both workers on a two-matrix problem, applying
//   g_k ← clip(g_k, C/√P);  u_k ← m·u_k + g_k;  v_k ← v_k + u_k;  mask = top-k(v_k);
//   sent_k = v_k ⊙ mask;  v_k ← v_k ⊙ ¬mask;  u_k ← u_k ⊙ ¬mask;  w ← w − lr·(Σ sent_k / P + λ·w)
// with the density warmed up over "epochs", and the trainer's pieces (Sgd with momentum
// correction, GradientSync with top-k and clipping, mask_velocity, set_density) must land on the
// same weights. Each piece is also switched off in the reference alone, which must then land
// far away: the comparison notices any one of them missing.
#include <gtest/gtest.h>
#include <mpi.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <memory>

#include "dgc.hpp"
#include "frugal/communicator.hpp"
#include "frugal/mpi.hpp"
#include "gradient_sync.hpp"
#include "sgd.hpp"

namespace frugal::train {
namespace {

constexpr int kRanks = 2;
constexpr double kMomentum = 0.9, kDecay = 0.01, kLr = 0.05, kClip = 2.0, kTarget = 0.04;
constexpr int kEpochs = 3, kStepsPerEpoch = 3, kWarmup = 2;

struct Pieces {
  bool clip = true, mask = true, warmup = true, decay_outside = true;
};

// Rank `rank`'s data at `step` (any process can make any rank's).
torch::Tensor data(int rank, int step, std::int64_t cols) {
  torch::manual_seed(static_cast<std::uint64_t>(1000 * step + 10 * rank + cols));
  return torch::randn({8, cols});
}

// The loss a rank sees: two matrices, so that one top-k bucket spans two parameters.
torch::Tensor loss_of(int rank, int step, const torch::Tensor& a, const torch::Tensor& b) {
  const torch::Tensor x = data(rank, step, 32), y = data(rank, step, 12);
  return (torch::matmul(x, a.t()) - 1).pow(2).mean() +
         (torch::matmul(y, b.t()) + 0.5).pow(2).mean();
}

std::vector<torch::Tensor> initial() {
  torch::manual_seed(7);
  return {torch::randn({16, 32}) * 0.3, torch::randn({6, 12}) * 0.3};
}

// The reference's schedule, written out apart from warmup_density: DGC's exponential ramp.
double reference_density(int epoch, bool warmup) {
  if (!warmup || epoch >= kWarmup) return kTarget;
  return std::pow(kTarget, (epoch + 1.0) / (kWarmup + 1.0));
}

// The serial reference; returns the final weights and counts the steps that clipped.
std::vector<torch::Tensor> reference(const Pieces& pieces, int* clipped) {
  std::vector<torch::Tensor> w = initial();
  const std::int64_t n = w[0].numel() + w[1].numel();
  std::vector<torch::Tensor> u(kRanks, torch::zeros({n})), v(kRanks, torch::zeros({n}));
  *clipped = 0;
  int step = 0;
  for (int epoch = 0; epoch < kEpochs; ++epoch) {
    const auto k = static_cast<std::int64_t>(
        std::ceil(reference_density(epoch, pieces.warmup) * static_cast<double>(n)));
    for (int s = 0; s < kStepsPerEpoch; ++s, ++step) {
      torch::Tensor sum = torch::zeros({n});
      for (int r = 0; r < kRanks; ++r) {
        torch::Tensor a = w[0].clone().requires_grad_(), b = w[1].clone().requires_grad_();
        loss_of(r, step, a, b).backward();
        torch::Tensor g = torch::cat({a.grad().flatten(), b.grad().flatten()});
        const double limit = kClip / std::sqrt(static_cast<double>(kRanks));
        const double norm = g.norm().item<double>();
        if (pieces.clip && norm > limit) {
          g = g * (limit / norm);
          ++*clipped;
        }
        if (!pieces.decay_outside) g = g + kDecay * torch::cat({w[0].flatten(), w[1].flatten()});
        u[r] = kMomentum * u[r] + g;
        v[r] = v[r] + u[r];
        const torch::Tensor index = std::get<1>(v[r].abs().topk(k));
        torch::Tensor mask = torch::zeros({n}, torch::kBool).index_fill_(0, index, true);
        sum = sum + v[r] * mask;
        v[r] = v[r] * mask.logical_not();
        if (pieces.mask) u[r] = u[r] * mask.logical_not();
      }
      const torch::Tensor update = sum / kRanks;
      const std::int64_t n0 = w[0].numel();
      for (int i = 0; i < 2; ++i) {
        const torch::Tensor part = i == 0 ? update.narrow(0, 0, n0) : update.narrow(0, n0, n - n0);
        const torch::Tensor decay = pieces.decay_outside ? kDecay * w[i] : torch::zeros_like(w[i]);
        w[i] = w[i] - kLr * (part.view(w[i].sizes()) + decay);
      }
    }
  }
  return w;
}

double distance(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double squares = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    squares += (a[i] - b[i]).square().sum().item<double>();
    norm += b[i].square().sum().item<double>();
  }
  return std::sqrt(squares / norm);
}

TEST(Dgc, TwoRanksFollowTheSerialReferenceOfDgcsUpdateRule) {
  torch::set_num_threads(1);
  Communicator comm(make_mpi_transport(MPI_COMM_WORLD));
  ASSERT_EQ(comm.size(), kRanks) << "run under mpirun -np 2";
  const int rank = comm.rank();

  std::vector<torch::Tensor> init = initial();
  torch::Tensor a = init[0].clone().requires_grad_(), b = init[1].clone().requires_grad_();
  Sgd sgd({{"a", a, true}, {"b", b, true}}, {kMomentum, false, kDecay, true});
  SyncOptions options;
  options.compression.method = compression::Method::TopK;
  options.compression.density = kTarget;
  options.dense_vectors = false;
  // The trainer's scaling (training_run.cpp): C/√P on the local gradient, which the sync sees
  // divided by P.
  options.clip_norm = kClip / (kRanks * std::sqrt(static_cast<double>(kRanks)));
  GradientSync sync(
      comm, {{"a", a}, {"b", b}}, options, 0,
      [&](std::size_t i, torch::Tensor& share) { sgd.accumulate_local(i, share, kRanks); });
  int step = 0;
  for (int epoch = 0; epoch < kEpochs; ++epoch) {
    sync.set_density(warmup_density(kTarget, epoch, kWarmup));
    for (int s = 0; s < kStepsPerEpoch; ++s, ++step) {
      sync.begin_step(true);
      (loss_of(rank, step, a, b) / kRanks).backward();
      ASSERT_TRUE(sync.end_step());
      sgd.step(kLr);
      mask_velocity(sgd.momentum(), sync.worker_residuals());
    }
  }
  const std::vector<torch::Tensor> trained = {a.detach(), b.detach()};

  int clipped = 0;
  const double error = distance(trained, reference({}, &clipped));
  if (rank == 0) std::printf("[ dgc ] relative distance to the serial reference %.3g\n", error);
  EXPECT_LT(error, 1e-5) << "rank " << rank;
  EXPECT_GT(clipped, 0) << "the threshold never clipped: the test would not see clipping";
  // Each piece matters: the reference without it is far from the trainer.
  const std::pair<const char*, Pieces> without[] = {
      {"clipping", {false, true, true, true}},
      {"masking", {true, false, true, true}},
      {"warm-up", {true, true, false, true}},
      {"decay outside the velocity", {true, true, true, false}},
  };
  for (const auto& [name, pieces] : without) {
    EXPECT_GT(distance(trained, reference(pieces, &clipped)), 100 * std::max(error, 1e-7))
        << "the reference without " << name << " is as close: the test cannot tell it is there";
  }
}

}  // namespace
}  // namespace frugal::train
