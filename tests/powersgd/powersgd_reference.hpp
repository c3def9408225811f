// A serial PowerSGD: one process plays every worker, in double precision, written as plainly as
// the method reads (Vogels et al. 2019, Algorithm 1 with error feedback; PyTorch's warm start and
// start_powerSGD_iter). The tests hold powersgd_allreduce to it.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <numbers>
#include <random>
#include <vector>

#include "frugal/collectives/powersgd.hpp"
#include "frugal/compression/rng.hpp"

namespace frugal::testing {

struct Shape {
  std::size_t rows;
  std::size_t cols;
};

// The column draw the library documents: Box-Muller over Rng(seed, tensor, step, 2 * (c * cols
// + j)), rounded to float as the library stores Q.
inline std::vector<double> reference_normal_column(std::uint64_t seed, std::size_t tensor,
                                                   std::uint64_t step, std::size_t c,
                                                   std::size_t cols) {
  compression::Rng rng(seed, tensor, step, 2 * c * cols);
  std::vector<double> out(cols);
  for (double& v : out) {
    const double u1 = rng.next_double();
    const double u2 = rng.next_double();
    v = static_cast<float>(std::sqrt(-2.0 * std::log(1.0 - u1)) *
                           std::cos(2.0 * std::numbers::pi * u2));
  }
  return out;
}

class PowerSgdReference {
 public:
  PowerSgdReference(int workers, std::vector<Shape> shapes, const PowerSgdOptions& options)
      : workers_(workers), shapes_(std::move(shapes)), options_(options) {
    const auto r = static_cast<std::size_t>(options.rank);
    for (std::size_t t = 0; t < shapes_.size(); ++t) {
      const auto [n, m] = shapes_[t];
      // (n + m) r rate < n m, and never a vector.
      const bool worth = n > 1 && m > 1 &&
                         double(n + m) * double(r) * options.min_compression_rate < double(n * m);
      compressed_.push_back(worth);
      std::vector<std::vector<double>> q(r);
      if (worth) {
        for (std::size_t c = 0; c < r; ++c)
          q[c] = reference_normal_column(options.seed, t, 0, c, m);
      }
      q_.push_back(q);
      residual_.push_back(std::vector<std::vector<double>>(static_cast<std::size_t>(workers),
                                                           std::vector<double>(n * m, 0.0)));
    }
  }

  // inputs[w][t]: worker w's gradient of tensor t. Returns the result every rank should hold.
  std::vector<std::vector<double>> step(
      const std::vector<std::vector<std::vector<float>>>& inputs) {
    const auto W = static_cast<std::size_t>(workers_);
    const double scale = options_.op == ReduceOp::Average ? 1.0 / double(W) : 1.0;
    std::vector<std::vector<double>> out(shapes_.size());
    for (std::size_t t = 0; t < shapes_.size(); ++t) {
      const auto [n, m] = shapes_[t];
      const bool dense = step_ < options_.start_iter || !compressed_[t];
      if (dense) {
        out[t].assign(n * m, 0.0);
        for (std::size_t w = 0; w < W; ++w) {
          for (std::size_t e = 0; e < n * m; ++e) out[t][e] += inputs[w][t][e];
        }
        for (double& v : out[t]) v *= scale;
        continue;
      }
      const auto r = static_cast<std::size_t>(options_.rank);
      // Compensated gradients.
      std::vector<std::vector<double>> M(W, std::vector<double>(n * m));
      for (std::size_t w = 0; w < W; ++w) {
        for (std::size_t e = 0; e < n * m; ++e) {
          M[w][e] = inputs[w][t][e] + (options_.error_feedback ? residual_[t][w][e] : 0.0);
        }
      }
      // P = sum_w M_w Q, columns orthonormalised.
      std::vector<std::vector<double>> P(r, std::vector<double>(n, 0.0));
      for (std::size_t c = 0; c < r; ++c) {
        for (std::size_t w = 0; w < W; ++w) {
          for (std::size_t i = 0; i < n; ++i) {
            for (std::size_t j = 0; j < m; ++j) P[c][i] += M[w][i * m + j] * q_[t][c][j];
          }
        }
      }
      for (std::size_t c = 0; c < r; ++c) {
        for (std::size_t k = 0; k < c; ++k) {
          double d = 0;
          for (std::size_t i = 0; i < n; ++i) d += P[c][i] * P[k][i];
          for (std::size_t i = 0; i < n; ++i) P[c][i] -= d * P[k][i];
        }
        double norm = 0;
        for (std::size_t i = 0; i < n; ++i) norm += P[c][i] * P[c][i];
        norm = std::sqrt(norm);
        for (std::size_t i = 0; i < n; ++i) P[c][i] = norm > 0 ? P[c][i] / norm : 0.0;
      }
      // Q = sum_w M_w^T P (times 1/W under Average).
      std::vector<std::vector<double>> Q(r, std::vector<double>(m, 0.0));
      for (std::size_t c = 0; c < r; ++c) {
        for (std::size_t w = 0; w < W; ++w) {
          for (std::size_t i = 0; i < n; ++i) {
            for (std::size_t j = 0; j < m; ++j) Q[c][j] += M[w][i * m + j] * P[c][i];
          }
        }
        for (double& v : Q[c]) v *= scale;
      }
      out[t].assign(n * m, 0.0);
      for (std::size_t i = 0; i < n; ++i) {
        for (std::size_t j = 0; j < m; ++j) {
          for (std::size_t c = 0; c < r; ++c) out[t][i * m + j] += P[c][i] * Q[c][j];
        }
      }
      // Each worker keeps its share of what the mean missed.
      const double share = options_.op == ReduceOp::Sum ? 1.0 / double(W) : 1.0;
      for (std::size_t w = 0; w < W && options_.error_feedback; ++w) {
        for (std::size_t e = 0; e < n * m; ++e) residual_[t][w][e] = M[w][e] - out[t][e] * share;
      }
      for (std::size_t c = 0; c < r; ++c) {
        bool zero = true;
        for (double v : Q[c]) zero = zero && v == 0.0;
        q_[t][c] = zero ? reference_normal_column(options_.seed, t, step_ + 1, c, m) : Q[c];
      }
    }
    ++step_;
    return out;
  }

  bool compressed(std::size_t t) const { return compressed_[t]; }

 private:
  int workers_;
  std::vector<Shape> shapes_;
  PowerSgdOptions options_;
  std::uint64_t step_ = 0;
  std::vector<bool> compressed_;
  std::vector<std::vector<std::vector<double>>> q_;         // [tensor][column][j]
  std::vector<std::vector<std::vector<double>>> residual_;  // [tensor][worker][element]
};

// Worker w's gradient of tensor t at step s: normal values from a generator keyed by all three,
// so every process of an mpirun test rebuilds every rank's input. `zero_tensor` (if < shapes)
// is all zero for steps below `zero_steps`.
inline std::vector<std::vector<float>> case_inputs(int worker, int step,
                                                   const std::vector<Shape>& shapes,
                                                   std::size_t zero_tensor = SIZE_MAX,
                                                   int zero_steps = 0) {
  std::vector<std::vector<float>> out;
  for (std::size_t t = 0; t < shapes.size(); ++t) {
    std::mt19937_64 gen(1000003ULL * std::uint64_t(worker) + 7919ULL * std::uint64_t(step) + t);
    std::normal_distribution<double> normal(0.0, 1.0);
    std::vector<float> v(shapes[t].rows * shapes[t].cols);
    for (float& x : v) x = static_cast<float>(normal(gen));
    if (t == zero_tensor && step < zero_steps) std::fill(v.begin(), v.end(), 0.0f);
    out.push_back(std::move(v));
  }
  return out;
}

// The largest |got - want| over the tensor, relative to the largest |want| (1 if that is 0).
inline double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
  double worst = 0, scale = 0;
  for (std::size_t e = 0; e < want.size(); ++e) {
    worst = std::max(worst, std::abs(double(got[e]) - want[e]));
    scale = std::max(scale, std::abs(want[e]));
  }
  return worst / (scale > 0 ? scale : 1.0);
}

}  // namespace frugal::testing
