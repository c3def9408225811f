#include "dgc.hpp"

#include <cmath>

#include "frugal/error.hpp"

namespace frugal::train {

double warmup_density(double target, std::int64_t epoch, std::int64_t warmup_epochs) {
  require(target > 0 && target <= 1, "--density", "must be in (0, 1]");
  require(warmup_epochs >= 0, "--density-warmup-epochs", "must be >= 0");
  if (epoch >= warmup_epochs) return target;
  const double e = static_cast<double>(std::max<std::int64_t>(epoch, 0) + 1);
  return std::pow(target, e / static_cast<double>(warmup_epochs + 1));
}

void mask_velocity(std::vector<torch::Tensor>& velocity,
                   const std::vector<torch::Tensor>& residuals) {
  require(velocity.size() == residuals.size(), "mask_velocity", "one residual per parameter");
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < velocity.size(); ++i) {
    if (!velocity[i].defined() || !residuals[i].defined()) continue;
    velocity[i].masked_fill_(residuals[i] == 0, 0.0f);
  }
}

}  // namespace frugal::train
