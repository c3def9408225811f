#include "models/resnet.hpp"

#include <algorithm>

#include "frugal/error.hpp"

namespace frugal::train {

namespace {

namespace nn = torch::nn;

nn::Conv2d conv(std::int64_t in, std::int64_t out, std::int64_t kernel, std::int64_t stride) {
  return nn::Conv2d(
      nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).bias(false));
}

// Interface the residual blocks share, so that the zero-initialised γ can be found generically.
class Block : public nn::Module {
 public:
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
  virtual nn::BatchNorm2d last_bn() = 0;
};

// Two 3×3 convolutions. Shortcut: identity, option A (subsample + zero channels, CIFAR) or a
// 1×1 convolution + BN projection (ImageNet).
class BasicBlock : public Block {
 public:
  BasicBlock(std::int64_t in, std::int64_t out, std::int64_t stride, bool projection)
      : conv1_(register_module("conv1", conv(in, out, 3, stride))),
        bn1_(register_module("bn1", nn::BatchNorm2d(out))),
        conv2_(register_module("conv2", conv(out, out, 3, 1))),
        bn2_(register_module("bn2", nn::BatchNorm2d(out))),
        stride_(stride),
        pad_(out - in) {
    if ((stride != 1 || in != out) && projection) {
      down_conv_ = register_module("downsample_conv", conv(in, out, 1, stride));
      down_bn_ = register_module("downsample_bn", nn::BatchNorm2d(out));
    }
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    torch::Tensor y = torch::relu(bn1_->forward(conv1_->forward(x)));
    y = bn2_->forward(conv2_->forward(y));
    return torch::relu(y + shortcut(x));
  }

  nn::BatchNorm2d last_bn() override { return bn2_; }

 private:
  torch::Tensor shortcut(const torch::Tensor& x) {
    if (down_conv_) return down_bn_->forward(down_conv_->forward(x));
    if (stride_ == 1 && pad_ == 0) return x;
    using torch::indexing::None;
    using torch::indexing::Slice;
    torch::Tensor s =
        x.index({Slice(), Slice(), Slice(None, None, stride_), Slice(None, None, stride_)});
    // Option A: the extra channels are zeros, split evenly before and after.
    return torch::constant_pad_nd(s, {0, 0, 0, 0, pad_ / 2, pad_ - pad_ / 2});
  }

  nn::Conv2d conv1_;
  nn::BatchNorm2d bn1_;
  nn::Conv2d conv2_;
  nn::BatchNorm2d bn2_;
  nn::Conv2d down_conv_{nullptr};
  nn::BatchNorm2d down_bn_{nullptr};
  std::int64_t stride_;
  std::int64_t pad_;
};

// 1×1 reduce, 3×3 (with the stride, as torchvision's ResNet v1.5), 1×1 expand by 4.
class Bottleneck : public Block {
 public:
  static constexpr std::int64_t kExpansion = 4;

  Bottleneck(std::int64_t in, std::int64_t width, std::int64_t stride)
      : conv1_(register_module("conv1", conv(in, width, 1, 1))),
        bn1_(register_module("bn1", nn::BatchNorm2d(width))),
        conv2_(register_module("conv2", conv(width, width, 3, stride))),
        bn2_(register_module("bn2", nn::BatchNorm2d(width))),
        conv3_(register_module("conv3", conv(width, width * kExpansion, 1, 1))),
        bn3_(register_module("bn3", nn::BatchNorm2d(width * kExpansion))) {
    if (stride != 1 || in != width * kExpansion) {
      down_conv_ = register_module("downsample_conv", conv(in, width * kExpansion, 1, stride));
      down_bn_ = register_module("downsample_bn", nn::BatchNorm2d(width * kExpansion));
    }
  }

  torch::Tensor forward(const torch::Tensor& x) override {
    torch::Tensor y = torch::relu(bn1_->forward(conv1_->forward(x)));
    y = torch::relu(bn2_->forward(conv2_->forward(y)));
    y = bn3_->forward(conv3_->forward(y));
    const torch::Tensor s = down_conv_ ? down_bn_->forward(down_conv_->forward(x)) : x;
    return torch::relu(y + s);
  }

  nn::BatchNorm2d last_bn() override { return bn3_; }

 private:
  nn::Conv2d conv1_;
  nn::BatchNorm2d bn1_;
  nn::Conv2d conv2_;
  nn::BatchNorm2d bn2_;
  nn::Conv2d conv3_;
  nn::BatchNorm2d bn3_;
  nn::Conv2d down_conv_{nullptr};
  nn::BatchNorm2d down_bn_{nullptr};
};

class ResNet : public nn::Module {
 public:
  // CIFAR style: `blocks` basic blocks per stage, 3 stages.
  ResNet(std::int64_t in_channels, std::int64_t classes, std::int64_t blocks, bool zero_residual)
      : imagenet_(false) {
    stem_conv_ = register_module("conv1", conv(in_channels, 16, 3, 1));
    stem_bn_ = register_module("bn1", nn::BatchNorm2d(16));
    std::int64_t in = 16;
    const std::int64_t widths[] = {16, 32, 64};
    for (int stage = 0; stage < 3; ++stage) {
      for (std::int64_t b = 0; b < blocks; ++b) {
        const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        add_block(stage, b, std::make_shared<BasicBlock>(in, widths[stage], stride, false));
        in = widths[stage];
      }
    }
    fc_ = register_module("fc", nn::Linear(in, classes));
    init(zero_residual);
  }

  // ImageNet style: `blocks[i]` blocks in stage i, basic or bottleneck.
  ResNet(std::int64_t in_channels, std::int64_t classes, const std::vector<std::int64_t>& blocks,
         bool bottleneck, bool zero_residual)
      : imagenet_(true) {
    stem_conv_ = register_module(
        "conv1",
        nn::Conv2d(nn::Conv2dOptions(in_channels, 64, 7).stride(2).padding(3).bias(false)));
    stem_bn_ = register_module("bn1", nn::BatchNorm2d(64));
    std::int64_t in = 64;
    for (int stage = 0; stage < 4; ++stage) {
      const std::int64_t width = std::int64_t{64} << stage;
      for (std::int64_t b = 0; b < blocks[static_cast<std::size_t>(stage)]; ++b) {
        const std::int64_t stride = (stage > 0 && b == 0) ? 2 : 1;
        if (bottleneck) {
          add_block(stage, b, std::make_shared<Bottleneck>(in, width, stride));
          in = width * Bottleneck::kExpansion;
        } else {
          add_block(stage, b, std::make_shared<BasicBlock>(in, width, stride, true));
          in = width;
        }
      }
    }
    fc_ = register_module("fc", nn::Linear(in, classes));
    init(zero_residual);
  }

  torch::Tensor forward(const torch::Tensor& x) {
    torch::Tensor y = torch::relu(stem_bn_->forward(stem_conv_->forward(x)));
    if (imagenet_) y = torch::max_pool2d(y, 3, 2, 1);
    for (const auto& block : blocks_) y = block->forward(y);
    y = torch::adaptive_avg_pool2d(y, {1, 1}).flatten(1);
    return fc_->forward(y);
  }

  std::vector<torch::Tensor> zero_gammas() {
    std::vector<torch::Tensor> out;
    for (const auto& block : blocks_) out.push_back(block->last_bn()->weight);
    return out;
  }

 private:
  void add_block(int stage, std::int64_t index, std::shared_ptr<Block> block) {
    blocks_.push_back(register_module(
        "layer" + std::to_string(stage + 1) + "_" + std::to_string(index), std::move(block)));
  }

  void init(bool zero_residual) {
    torch::NoGradGuard no_grad;
    for (auto& module : modules(/*include_self=*/false)) {
      if (auto* c = module->as<nn::Conv2d>()) {
        nn::init::kaiming_normal_(c->weight, 0.0, torch::kFanOut, torch::kReLU);
      } else if (auto* bn = module->as<nn::BatchNorm2d>()) {
        bn->weight.fill_(1.0);
        bn->bias.zero_();
      }
    }
    if (!zero_residual) return;
    for (auto& gamma : zero_gammas()) gamma.zero_();
  }

  bool imagenet_;
  nn::Conv2d stem_conv_{nullptr};
  nn::BatchNorm2d stem_bn_{nullptr};
  std::vector<std::shared_ptr<Block>> blocks_;
  nn::Linear fc_{nullptr};
};

ResNet& as_resnet(torch::nn::Module& model) {
  auto* resnet = dynamic_cast<ResNet*>(&model);
  if (resnet == nullptr) throw Error(ErrorCode::InvalidArgument, "model: not made by make_model");
  return *resnet;
}

}  // namespace

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = {"resnet20", "resnet32", "resnet56",
                                                 "resnet18", "resnet34", "resnet50"};
  return names;
}

std::shared_ptr<torch::nn::Module> make_model(const ModelSpec& spec) {
  require(spec.in_channels > 0, "in_channels", "must be positive");
  require(spec.classes > 0, "classes", "must be positive");
  const std::string& n = spec.name;
  const auto cifar = [&](std::int64_t blocks) {
    return std::make_shared<ResNet>(spec.in_channels, spec.classes, blocks,
                                    spec.zero_init_residual);
  };
  const auto imagenet = [&](const std::vector<std::int64_t>& blocks, bool bottleneck) {
    return std::make_shared<ResNet>(spec.in_channels, spec.classes, blocks, bottleneck,
                                    spec.zero_init_residual);
  };
  if (n == "resnet20") return cifar(3);
  if (n == "resnet32") return cifar(5);
  if (n == "resnet56") return cifar(9);
  if (n == "resnet18") return imagenet({2, 2, 2, 2}, false);
  if (n == "resnet34") return imagenet({3, 4, 6, 3}, false);
  if (n == "resnet50") return imagenet({3, 4, 6, 3}, true);
  std::string known;
  for (const std::string& name : model_names()) known += (known.empty() ? "" : ", ") + name;
  throw Error(ErrorCode::InvalidArgument,
              "--model: unknown model '" + n + "' (known: " + known + ")");
}

torch::Tensor forward(torch::nn::Module& model, const torch::Tensor& images) {
  return as_resnet(model).forward(images);
}

std::vector<torch::Tensor> zero_init_gammas(torch::nn::Module& model) {
  return as_resnet(model).zero_gammas();
}

}  // namespace frugal::train
