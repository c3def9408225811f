#include "sgd.hpp"

#include "frugal/error.hpp"

namespace frugal::train {

Sgd::Sgd(std::vector<Param> params, SgdOptions options)
    : params_(std::move(params)), options_(options), momentum_(params_.size()) {
  require(options_.momentum >= 0 && options_.momentum < 1, "--momentum", "must be in [0, 1)");
  require(options_.weight_decay >= 0, "--weight-decay", "must be >= 0");
  require(!options_.nesterov || options_.momentum > 0, "--nesterov", "needs --momentum > 0");
  require(!options_.momentum_correction || options_.momentum > 0, "--momentum-correction",
          "needs --momentum > 0");
}

torch::Tensor Sgd::direction(std::size_t i, const torch::Tensor& g, double weight_decay) {
  const torch::Tensor& p = params_[i].value;
  torch::Tensor d = g;
  if (params_[i].decay && weight_decay != 0) d = d.add(p, weight_decay);
  if (options_.momentum == 0) return d;
  torch::Tensor& v = momentum_[i];
  if (!v.defined()) {
    v = d.clone();
  } else {
    v.mul_(options_.momentum).add_(d);
  }
  return options_.nesterov ? d.add(v, options_.momentum) : v;
}

void Sgd::accumulate_local(std::size_t i, torch::Tensor& share, int ranks) {
  require(options_.momentum_correction, "accumulate_local", "needs momentum correction");
  require(i < params_.size() && ranks > 0, "accumulate_local", "bad parameter index or ranks");
  torch::NoGradGuard no_grad;
  // Weight decay stays out of the velocity (step() adds it): a compressed, delayed velocity
  // would apply the decay late and unevenly, and λ·w is the same on every rank anyway.
  const torch::Tensor d = direction(i, share, 0);
  // `d` may be the velocity buffer itself: copy, so the caller's buffer stays its own.
  share.copy_(d);
}

void Sgd::step(double lr) {
  torch::NoGradGuard no_grad;
  for (std::size_t i = 0; i < params_.size(); ++i) {
    torch::Tensor& p = params_[i].value;
    const torch::Tensor& g = p.grad();
    if (!g.defined()) continue;
    if (!options_.momentum_correction) {
      p.add_(direction(i, g, options_.weight_decay), -lr);
      continue;
    }
    // The weights are identical on every rank, so is the decay.
    if (params_[i].decay && options_.weight_decay != 0) {
      p.add_(g.add(p, options_.weight_decay), -lr);
    } else {
      p.add_(g, -lr);
    }
  }
}

}  // namespace frugal::train
