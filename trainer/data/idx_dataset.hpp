#pragma once

// IDX datasets (Fashion-MNIST, MNIST-format directories): loaded once into memory as bytes,
// normalised and augmented when an example is requested.

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "dataset.hpp"
#include "idx_file.hpp"

namespace frugal::train {

// Pixel statistics of a train split, over all pixels scaled to [0, 1] (population std).
struct IdxStats {
  double mean = 0;
  double std = 1;
  std::int64_t num_classes = 0;  // 1 + the largest train label
};

// The train split's statistics of an IDX directory, computed once per process and directory.
IdxStats idx_train_stats(const std::filesystem::path& dir);

// The train augmentation of an IDX example, as torchvision's RandomCrop(size, padding=pad)
// followed by RandomHorizontalFlip(): offsets in [0, 2·pad] into the zero-padded image.
struct IdxAugmentation {
  int dx = 0, dy = 0;
  bool flip = false;
};
IdxAugmentation draw_idx_augmentation(std::uint64_t seed, int pad);

// out(y, x) = normalise(padded(y + dy, x' + dx)), x' = flip ? size-1-x : x, where padded is
// the size × size image with `pad` zero pixels on every side. No augmentation: dx = dy = pad.
void pad_crop_flip(std::span<const std::uint8_t> image, int size, int pad, IdxAugmentation aug,
                   float mean, float std, std::span<float> out);

class IdxDataset final : public Dataset {
 public:
  // Loads DIR/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]; `name` is for describe().
  IdxDataset(const std::filesystem::path& dir, std::string name, Split split,
             const DataOptions& options);

  std::size_t size() const override { return images_.count; }
  std::int64_t num_classes() const override { return stats_.num_classes; }
  std::int64_t channels() const override { return 1; }
  std::int64_t image_size() const override { return static_cast<std::int64_t>(images_.rows); }
  Example get(std::size_t index, std::uint64_t seed) const override;
  std::string describe() const override;

  static constexpr int kPad = 4;

 private:
  std::string name_;
  Split split_;
  bool augment_;
  IdxImages images_;
  std::vector<std::uint8_t> labels_;
  IdxStats stats_;
};

}  // namespace frugal::train
