// PowerSGD with error feedback must reach what dense training reaches on a least-squares
// problem whose workers hold different data; without error feedback (or with a broken one) the
// same budget must fall short, so this test can tell them apart.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "frugal/collectives/powersgd.hpp"
#include "loopback_harness.hpp"

namespace frugal {
namespace {

constexpr int kRanks = 4;
constexpr std::size_t kOut = 16, kIn = 32, kSamples = 48;  // per worker
constexpr int kSteps = 300;
// Error feedback delays what rank 1 leaves out by up to ~kOut steps, then applies it at once: on
// this flat-spectrum problem it diverges from lr 0.1 on (where dense still converges), as EF
// theory's step-size bound (scaled by the compression's quality) predicts. 0.02 is stable.
constexpr float kLr = 0.02f;

struct Problem {
  // Per worker: X (kSamples x kIn) and Y (kSamples x kOut).
  std::vector<std::vector<float>> x, y;
};

// Targets from a full-rank W* plus noise, so the optimum's loss is above zero and every worker's
// gradient at the optimum is not (only their mean is).
Problem make_problem() {
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w_star(kOut * kIn);
  for (float& v : w_star) v = normal(gen) / std::sqrt(float(kIn));
  Problem p;
  for (int w = 0; w < kRanks; ++w) {
    std::vector<float> x(kSamples * kIn), y(kSamples * kOut);
    // Each worker's own optimum: W* plus a perturbation of its own.
    std::vector<float> w_own = w_star;
    for (float& v : w_own) v += 0.3f * normal(gen) / std::sqrt(float(kIn));
    for (float& v : x) v = normal(gen);
    for (std::size_t s = 0; s < kSamples; ++s) {
      for (std::size_t o = 0; o < kOut; ++o) {
        float acc = 0.5f * normal(gen) + float(w) * 0.2f;  // noise and a per-worker offset
        for (std::size_t i = 0; i < kIn; ++i) acc += w_own[o * kIn + i] * x[s * kIn + i];
        y[s * kOut + o] = acc;
      }
    }
    p.x.push_back(x);
    p.y.push_back(y);
  }
  return p;
}

// Mean squared error over all workers' samples of y = W x + b.
double loss(const Problem& p, const std::vector<float>& w, const std::vector<float>& b) {
  double total = 0;
  for (int k = 0; k < kRanks; ++k) {
    for (std::size_t s = 0; s < kSamples; ++s) {
      for (std::size_t o = 0; o < kOut; ++o) {
        double pred = b[o];
        for (std::size_t i = 0; i < kIn; ++i) pred += double(w[o * kIn + i]) * p.x[k][s * kIn + i];
        const double e = pred - p.y[k][s * kOut + o];
        total += e * e;
      }
    }
  }
  return total / double(kRanks * kSamples);
}

// Trains on kRanks loopback ranks (each its own data) and returns the final loss.
double train(const Problem& p, const PowerSgdOptions& options) {
  std::vector<float> final_w, final_b;
  testing::run_ranks(kRanks, [&](Communicator& comm) {
    const auto me = std::size_t(comm.rank());
    std::vector<float> w(kOut * kIn, 0.0f), b(kOut, 0.0f);
    PowerSgdState state;
    for (int step = 0; step < kSteps; ++step) {
      std::vector<float> gw(kOut * kIn, 0.0f), gb(kOut, 0.0f);
      for (std::size_t s = 0; s < kSamples; ++s) {
        for (std::size_t o = 0; o < kOut; ++o) {
          float pred = b[o];
          for (std::size_t i = 0; i < kIn; ++i) pred += w[o * kIn + i] * p.x[me][s * kIn + i];
          const float e = 2.0f * (pred - p.y[me][s * kOut + o]) / float(kSamples);
          gb[o] += e;
          for (std::size_t i = 0; i < kIn; ++i) gw[o * kIn + i] += e * p.x[me][s * kIn + i];
        }
      }
      const PowerSgdTensor tensors[] = {{std::span<float>(gw), kOut, kIn},
                                        {std::span<float>(gb), kOut, 1}};
      powersgd_allreduce(comm, tensors, state, options);
      for (std::size_t e = 0; e < w.size(); ++e) w[e] -= kLr * gw[e];
      for (std::size_t e = 0; e < b.size(); ++e) b[e] -= kLr * gb[e];
    }
    if (me == 0) {
      final_w = w;
      final_b = b;
    }
  });
  return loss(p, final_w, final_b);
}

TEST(PowerSgdConvergence, ErrorFeedbackReachesTheDenseLossWithoutItFallsShort) {
  const Problem p = make_problem();
  const double initial =
      loss(p, std::vector<float>(kOut * kIn, 0.0f), std::vector<float>(kOut, 0.0f));
  PowerSgdOptions dense;
  dense.start_iter = kSteps;  // every step dense: the optimum this budget reaches
  const double optimum = train(p, dense);
  PowerSgdOptions ef;
  ef.rank = 1;
  ef.start_iter = 0;
  const double with_ef = train(p, ef);
  PowerSgdOptions no_ef = ef;
  no_ef.error_feedback = false;
  const double without_ef = train(p, no_ef);
  const double gap = initial - optimum;
  std::printf("loss: initial %.6f, dense %.6f, PowerSGD r=1 with EF %.6f, without EF %.6f\n",
              initial, optimum, with_ef, without_ef);
  ASSERT_GT(gap, 0.0);
  EXPECT_LT(with_ef - optimum, 0.01 * gap);
  EXPECT_GT(without_ef - optimum, 0.05 * gap);
}

}  // namespace
}  // namespace frugal
