// What the multi-process trainer tests share: a synthetic dataset (no files), a communicator
// over MPI that counts the bytes it sends, small training options and the flat parameters of a
// model.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "counting_transport.hpp"
#include "data/dataset.hpp"
#include "frugal/communicator.hpp"
#include "frugal/mpi.hpp"
#include "trainer.hpp"

namespace frugal::train::testing {

// Four classes of 12×12 one-channel images: a fixed random ±1 template per class plus Gaussian
// noise that depends on the index only. Optionally one index yields a NaN image.
class SyntheticDataset final : public Dataset {
 public:
  SyntheticDataset(std::size_t size, std::uint64_t salt, std::optional<std::size_t> nan_index = {})
      : size_(size), salt_(salt), nan_index_(nan_index) {
    std::mt19937_64 rng(42);
    std::uniform_int_distribution<int> bit(0, 1);
    templates_.resize(kClasses * kPixels);
    for (float& v : templates_) v = bit(rng) != 0 ? 1.0f : -1.0f;
  }
  std::size_t size() const override { return size_; }
  std::int64_t num_classes() const override { return kClasses; }
  std::int64_t channels() const override { return 1; }
  std::int64_t image_size() const override { return kSide; }
  Example get(std::size_t index, std::uint64_t) const override {
    std::mt19937_64 rng(index * 1000003 + salt_);
    std::normal_distribution<float> noise(0.0f, 1.0f);
    const auto label = static_cast<std::int64_t>(index % kClasses);
    torch::Tensor image = torch::empty({1, kSide, kSide});
    float* p = image.data_ptr<float>();
    for (std::size_t i = 0; i < kPixels; ++i) {
      p[i] = templates_[static_cast<std::size_t>(label) * kPixels + i] + noise(rng);
    }
    if (nan_index_ && *nan_index_ == index) p[0] = NAN;
    return {image, label};
  }
  std::string describe() const override { return "synthetic"; }

 private:
  static constexpr std::int64_t kClasses = 4;
  static constexpr std::int64_t kSide = 12;
  static constexpr std::size_t kPixels = kSide * kSide;
  std::size_t size_;
  std::uint64_t salt_;
  std::optional<std::size_t> nan_index_;
  std::vector<float> templates_;
};

struct Counted {
  std::unique_ptr<Communicator> comm;
  CountingTransport* counter = nullptr;
};

inline Counted counted_communicator(MPI_Comm mpi_comm) {
  auto transport = std::make_unique<CountingTransport>(make_mpi_transport(mpi_comm));
  Counted c;
  c.counter = transport.get();
  c.comm = std::make_unique<Communicator>(std::move(transport));
  return c;
}

// ResNet-20, global batch 16, step decay, momentum 0.9, weight decay 5e-4, 64 validation images.
inline TrainOptions small_options(std::int64_t epochs) {
  TrainOptions o;
  o.model = "resnet20";
  o.schedule.base_lr = 0.05;
  o.schedule.ref_batch = 16;
  o.schedule.global_batch = 16;
  o.schedule.decay = Decay::Step;
  o.schedule.epochs = epochs;
  o.sgd = {0.9, false, 5e-4};
  o.loader_threads = 1;
  o.limit_val = 64;
  o.seed = 5;
  return o;
}

inline torch::Tensor flat_parameters(torch::nn::Module& model) {
  std::vector<torch::Tensor> parts;
  for (const auto& p : model.parameters()) parts.push_back(p.detach().flatten());
  return torch::cat(parts);
}

}  // namespace frugal::train::testing
