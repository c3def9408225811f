#pragma once
// BMUF against a serial reference: one process simulates every rank's local SGD on its own
// least-squares shard and applies the block update; the real Bmuf runs the same on `comm`.
// Shared by the in-process tests (bmuf_test.cpp, loopback ranks) and the mpirun tests
// (bmuf_mpi_test.cpp).

#include <cmath>
#include <cstddef>
#include <span>
#include <string>
#include <vector>

#include "frugal/collectives/bmuf.hpp"
#include "frugal/communicator.hpp"

namespace frugal::testing {

constexpr std::size_t kWeights = 250;  // tensor "w"
constexpr std::size_t kBias = 5;       // tensor "b"
constexpr std::size_t kParams = kWeights + kBias;
constexpr std::size_t kRowsPerRank = 16;
constexpr float kLocalLr = 0.008f;

// Rank r's shard: rows and targets from a small integer hash, different on each rank so that
// the local models drift apart within a block.
inline float shard_value(int rank, std::size_t row, std::size_t col) {
  const std::size_t h = (row * 131 + col * 31 + static_cast<std::size_t>(rank) * 977 + 7) % 97;
  return static_cast<float>(h) / 48.5f - 1.0f;
}

// One full-batch gradient step on rank r's shard: loss = mean over rows of (a·x − y)² / 2.
inline void local_step(int rank, std::span<float> x) {
  std::vector<float> grad(kParams, 0.0f);
  for (std::size_t row = 0; row < kRowsPerRank; ++row) {
    float residual = -shard_value(rank, row, kParams);  // the target
    for (std::size_t j = 0; j < kParams; ++j) residual += shard_value(rank, row, j) * x[j];
    for (std::size_t j = 0; j < kParams; ++j) grad[j] += residual * shard_value(rank, row, j);
  }
  for (std::size_t j = 0; j < kParams; ++j) {
    x[j] -= kLocalLr * grad[j] / static_cast<float>(kRowsPerRank);
  }
}

// The global loss (the mean of every rank's), for convergence checks.
inline double global_loss(int ranks, std::span<const float> x) {
  double sum = 0;
  for (int r = 0; r < ranks; ++r) {
    for (std::size_t row = 0; row < kRowsPerRank; ++row) {
      double residual = -shard_value(r, row, kParams);
      for (std::size_t j = 0; j < kParams; ++j) residual += shard_value(r, row, j) * x[j];
      sum += residual * residual / 2;
    }
  }
  return sum / static_cast<double>(ranks * static_cast<int>(kRowsPerRank));
}

inline std::vector<float> initial_model() {
  std::vector<float> x(kParams);
  for (std::size_t j = 0; j < kParams; ++j) x[j] = 0.1f * static_cast<float>(j % 5) - 0.2f;
  return x;
}

// The serial reference: the block start W_g after each of `blocks` blocks of H steps on
// `ranks` simulated ranks, written from the formulas (in double, the library works in float).
inline std::vector<std::vector<double>> reference_blocks(int ranks, const BmufOptions& o,
                                                         int blocks) {
  const std::vector<float> x0 = initial_model();
  std::vector<double> w(x0.begin(), x0.end()), start = w, delta(kParams, 0.0);
  std::vector<std::vector<double>> out;
  for (int t = 0; t < blocks; ++t) {
    std::vector<double> mean(kParams, 0.0);
    for (int r = 0; r < ranks; ++r) {
      std::vector<float> local(start.begin(), start.end());
      for (std::size_t s = 0; s < o.block_steps; ++s) local_step(r, local);
      for (std::size_t j = 0; j < kParams; ++j) mean[j] += local[j] / ranks;
    }
    for (std::size_t j = 0; j < kParams; ++j) {
      const double g = mean[j] - start[j];  // Ḡ(t) = W̄(t) − W_g(t−1)
      delta[j] = o.block_momentum * delta[j] + o.block_lr * g;
      w[j] += delta[j];
      start[j] = o.nesterov ? w[j] + o.block_momentum * delta[j] : w[j];
    }
    out.push_back(start);
  }
  return out;
}

// This rank's model as two tensors ("w", "b") over one buffer.
struct RankModel {
  std::vector<float> x = initial_model();
  std::vector<BmufTensor> tensors() {
    return {{"w", std::span<float>(x).first(kWeights)}, {"b", std::span<float>(x).last(kBias)}};
  }
};

// The real thing on `comm`: W_g after each block, and the bytes this rank sent.
struct RunResult {
  std::vector<std::vector<float>> blocks;
  std::uint64_t bytes = 0;
};

inline RunResult run_bmuf(Communicator& comm, const BmufOptions& o, int blocks) {
  RankModel model;
  Bmuf bmuf(comm, model.tensors(), o);
  RunResult result;
  while (static_cast<int>(result.blocks.size()) < blocks) {
    local_step(comm.rank(), model.x);
    if (bmuf.step()) result.blocks.push_back(model.x);
  }
  result.bytes = bmuf.bytes_sent();
  return result;
}

// Largest |a − b| / (1 + |b|) over the blocks.
inline double max_relative_error(const std::vector<std::vector<float>>& got,
                                 const std::vector<std::vector<double>>& want) {
  double worst = got.size() == want.size() ? 0.0 : INFINITY;
  for (std::size_t t = 0; t < got.size() && t < want.size(); ++t) {
    for (std::size_t j = 0; j < kParams; ++j) {
      worst = std::max(worst, std::abs(got[t][j] - want[t][j]) / (1.0 + std::abs(want[t][j])));
    }
  }
  return worst;
}

}  // namespace frugal::testing
