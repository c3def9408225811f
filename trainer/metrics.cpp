#include "metrics.hpp"

#include <algorithm>
#include <cmath>
#include <span>

#include "frugal/collectives/allreduce.hpp"

namespace frugal::train {

void Sums::add(double loss_sum, double top1, double top5, double n) {
  v[0] += loss_sum;
  v[1] += top1;
  v[2] += top5;
  v[3] += n;
}

Sums& Sums::operator+=(const Sums& other) {
  for (std::size_t k = 0; k < v.size(); ++k) v[k] += other.v[k];
  return *this;
}

Sums Sums::global(Communicator& comm) const {
  Sums out = *this;
  if (comm.size() > 1) allreduce(comm, std::span<double>(out.v));
  return out;
}

double Sums::loss() const {
  return v[3] > 0 ? v[0] / v[3] : NAN;
}
double Sums::top1() const {
  return v[3] > 0 ? v[1] / v[3] : NAN;
}
double Sums::top5() const {
  return v[3] > 0 ? v[2] / v[3] : NAN;
}

std::pair<double, double> hits(const torch::Tensor& logits, const torch::Tensor& labels) {
  const std::int64_t k = std::min<std::int64_t>(5, logits.size(1));
  const torch::Tensor top = std::get<1>(logits.topk(k, 1));
  const torch::Tensor match = top.eq(labels.unsqueeze(1));
  return {match.select(1, 0).sum().item<double>(), match.any(1).sum().item<double>()};
}

}  // namespace frugal::train
