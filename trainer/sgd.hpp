#pragma once

// Momentum SGD with PyTorch's semantics (torch.optim.SGD, dampening 0), over named parameters so
// that its momentum buffers can be checkpointed by name:
//   d = g + wd·p;  v = μ·v + d (v = d on the first step);  p -= lr · (nesterov ? d + μ·v : v).
// Weight decay can be switched off per parameter (BN γ/β and biases with --no-wd-bn-bias).
//
// With momentum correction (DGC, Lin et al. 2018) every rank keeps the velocity of its own share
// of the gradient and the allreduce carries velocities instead of gradients: compressing the
// smooth velocity loses far less than compressing each noisy gradient, and with a dense
// allreduce the sum of the ranks' velocities is exactly the velocity above (the recursion is
// linear), so the update is unchanged. Weight decay is kept out of these velocities (as DGC
// asks): step() adds λ·p to the summed direction, from the weights every rank shares, so with
// momentum correction the update is p -= lr·(Σ velocities + λ·p): momentum on the gradient only
// (with a dense allreduce this differs from PyTorch's SGD by λ·p not entering the momentum).

#include <torch/torch.h>

#include <string>
#include <vector>

namespace frugal::train {

struct SgdOptions {
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0;
  bool momentum_correction = false;  // velocities are rank-local and allreduced (see above)
};

class Sgd {
 public:
  struct Param {
    std::string name;
    torch::Tensor value;
    bool decay = true;  // whether weight decay applies
  };

  Sgd(std::vector<Param> params, SgdOptions options);

  // Momentum correction only: turns `share`, this rank's share of parameter i's gradient (the
  // shares of all `ranks` sum to the global gradient), into its share of the update direction,
  // in place, advancing the rank-local velocity. Weight decay is not in it (step() applies it).
  void accumulate_local(std::size_t i, torch::Tensor& share, int ranks);

  // One update with learning rate `lr` from each parameter's .grad() (parameters without a
  // gradient are left alone). With momentum correction .grad() is the summed update direction
  // from accumulate_local and the step is p -= lr · (grad + wd·p).
  void step(double lr);

  const SgdOptions& options() const noexcept { return options_; }
  const std::vector<Param>& params() const noexcept { return params_; }
  // Momentum buffers, one per parameter, undefined until the parameter's first update (with
  // momentum correction: this rank's velocities).
  std::vector<torch::Tensor>& momentum() noexcept { return momentum_; }
  const std::vector<torch::Tensor>& momentum() const noexcept { return momentum_; }

 private:
  // d = g + wd·p;  v = μ·v + d;  returns the direction (v, or d + μ·v for Nesterov).
  torch::Tensor direction(std::size_t i, const torch::Tensor& g, double weight_decay);

  std::vector<Param> params_;
  SgdOptions options_;
  std::vector<torch::Tensor> momentum_;
};

}  // namespace frugal::train
