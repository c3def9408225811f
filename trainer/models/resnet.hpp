#pragma once

// ResNets for image classification, built for the dataset at hand (input channels, classes).
//
// CIFAR-style ResNet-20/32/56 (He et al. 2016, §4.2): a 3×3 stem with 16 channels, three stages
// of 16/32/64 channels with n = (depth − 2) / 6 basic blocks each, global average pooling and
// a linear classifier; shortcuts that change shape subsample by 2 and pad the new channels with
// zeros (the paper's option A, which is what gives ResNet-20 its 0.27 M parameters). For small
// images (28×28, 32×32).
//
// ImageNet-style ResNet-18/34 (basic blocks) and ResNet-50 (bottleneck blocks, stride on the 3×3
// convolution), equivalent to torchvision's: 7×7 stem with stride 2, 3×3 max-pool, four stages
// of 64/128/256/512 base channels, 1×1 convolution + BN projection shortcuts.
//
// By default every residual block's last BN starts with γ = 0 (Goyal et al. 2017), so each block
// starts as the identity; ModelSpec::zero_init_residual = false starts it at 1 like every other
// BN (torchvision's default), for studying what the zero start buys. Convolutions use
// Kaiming-normal (fan-out) initialisation as in torchvision.

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

namespace frugal::train {

struct ModelSpec {
  std::string name = "resnet20";  // resnet20|resnet32|resnet56|resnet18|resnet34|resnet50
  std::int64_t in_channels = 3;
  std::int64_t classes = 10;
  bool zero_init_residual = true;  // each residual block's last BN γ starts at 0 (else at 1)
};

// The architectures make_model knows, for --help and error messages.
const std::vector<std::string>& model_names();

// Builds the model with freshly initialised weights (from torch's default generator). Throws
// frugal::Error(InvalidArgument) on an unknown name or non-positive channels/classes.
std::shared_ptr<torch::nn::Module> make_model(const ModelSpec& spec);

// The model's forward: images [B, C, H, W] -> logits [B, classes]. `model` must come from
// make_model.
torch::Tensor forward(torch::nn::Module& model, const torch::Tensor& images);

// The last BN γ of every residual block (the ones zero_init_residual starts at 0), for the tests.
std::vector<torch::Tensor> zero_init_gammas(torch::nn::Module& model);

}  // namespace frugal::train
