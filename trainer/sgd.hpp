#pragma once

// Momentum SGD with PyTorch's semantics (torch.optim.SGD, dampening 0), over named parameters so
// that its momentum buffers can be checkpointed by name:
//   d = g + wd·p;  v = μ·v + d (v = d on the first step);  p -= lr · (nesterov ? d + μ·v : v).
// Weight decay can be switched off per parameter (BN γ/β and biases with --no-wd-bn-bias).

#include <torch/torch.h>

#include <string>
#include <vector>

namespace frugal::train {

struct SgdOptions {
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0;
};

class Sgd {
 public:
  struct Param {
    std::string name;
    torch::Tensor value;
    bool decay = true;  // whether weight decay applies
  };

  Sgd(std::vector<Param> params, SgdOptions options);

  // One update with learning rate `lr` from each parameter's .grad() (parameters without a
  // gradient are left alone).
  void step(double lr);

  const std::vector<Param>& params() const noexcept { return params_; }
  // Momentum buffers, one per parameter, undefined until the parameter's first update.
  std::vector<torch::Tensor>& momentum() noexcept { return momentum_; }
  const std::vector<torch::Tensor>& momentum() const noexcept { return momentum_; }

 private:
  std::vector<Param> params_;
  SgdOptions options_;
  std::vector<torch::Tensor> momentum_;
};

}  // namespace frugal::train
