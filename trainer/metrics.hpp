#pragma once

// What a window of training or validation examples scored, as sums that add up over steps and
// ranks.

#include <torch/torch.h>

#include <array>
#include <utility>

#include "frugal/communicator.hpp"

namespace frugal::train {

// Sums of a window of examples: loss, top-1 and top-5 hits, count.
struct Sums {
  std::array<double, 4> v{};
  void add(double loss_sum, double top1, double top5, double n);
  Sums& operator+=(const Sums& other);
  // Summed over ranks with a dense allreduce (every rank calls it).
  Sums global(Communicator& comm) const;
  double loss() const;  // NaN for an empty window
  double top1() const;
  double top5() const;
};

// Hits in the top 1 and top min(5, classes) of `logits` for `labels`.
std::pair<double, double> hits(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace frugal::train
