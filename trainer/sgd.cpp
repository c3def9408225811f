#include "sgd.hpp"

#include "frugal/error.hpp"

namespace frugal::train {

Sgd::Sgd(std::vector<Param> params, SgdOptions options)
    : params_(std::move(params)), options_(options), momentum_(params_.size()) {
  require(options_.momentum >= 0 && options_.momentum < 1, "--momentum", "must be in [0, 1)");
  require(options_.weight_decay >= 0, "--weight-decay", "must be >= 0");
  require(!options_.nesterov || options_.momentum > 0, "--nesterov", "needs --momentum > 0");
}

void Sgd::step(double lr) {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor& p = params_[i].value;
    const torch::Tensor& g = p.grad();
    if (!g.defined()) continue;
    torch::Tensor d = g;
    if (params_[i].decay && options_.weight_decay != 0) d = d.add(p, options_.weight_decay);
    if (options_.momentum != 0) {
      torch::Tensor& v = momentum_[i];
      if (!v.defined()) {
        v = d.clone();
      } else {
        v.mul_(options_.momentum).add_(d);
      }
      d = options_.nesterov ? d.add(v, options_.momentum) : v;
    }
    p.add_(d, -lr);
  }
}

}  // namespace frugal::train
