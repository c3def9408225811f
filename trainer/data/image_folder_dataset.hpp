#pragma once

// ImageNet-layout JPEG folders: DIR/train/<class>/<file>, DIR/val/<class>/<file>.

#include <cstdint>
#include <filesystem>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "dataset.hpp"
#include "resample.hpp"

namespace frugal::train {

inline constexpr Normalisation kImageNetNormalisation{{0.485f, 0.456f, 0.406f},
                                                      {0.229f, 0.224f, 0.225f}};

// torchvision's RandomResizedCrop parameters (scale 0.08–1, ratio 3/4–4/3, 10 attempts, then
// the centre crop fallback) for a width × height image, drawn from `rng_seed`; box in pixels.
CropBox random_resized_crop_box(int width, int height, std::uint64_t rng_seed);

// Resize-shorter-side-to size·256/224, then centre crop size × size, as a box in the source.
CropBox centre_crop_box(int width, int height, int size);

class ImageFolderDataset final : public Dataset {
 public:
  // Scans the folder once: classes = sorted subfolders of DIR/train, files sorted by name
  // within a class. Throws frugal::Error(InvalidArgument) naming the folder when DIR/train
  // (or DIR/val for Val) is missing, has no class folders, a class folder is empty, or a val
  // class is not a train class. Hidden entries (".name") are ignored.
  ImageFolderDataset(const std::filesystem::path& root, Split split, const DataOptions& options);

  std::size_t size() const override { return files_.size(); }
  std::int64_t num_classes() const override { return static_cast<std::int64_t>(classes_.size()); }
  std::int64_t channels() const override { return 3; }
  std::int64_t image_size() const override { return image_size_; }
  // A file that cannot be read or decoded throws naming it, or with skip_corrupt prints a
  // warning (once per file) and yields the next readable example in folder order (wrapping),
  // with that example's own label.
  Example get(std::size_t index, std::uint64_t seed) const override;
  std::string describe() const override;

  const std::vector<std::string>& classes() const { return classes_; }
  const std::filesystem::path& file(std::size_t index) const { return files_.at(index); }

 private:
  void decode_into(std::size_t index, std::uint64_t seed, float* out) const;

  std::filesystem::path root_;
  Split split_;
  bool augment_;
  bool skip_corrupt_;
  int image_size_;
  std::vector<std::string> classes_;
  std::vector<std::filesystem::path> files_;
  std::vector<std::int64_t> labels_;
  mutable std::mutex warned_mutex_;
  mutable std::set<std::size_t> warned_;
};

}  // namespace frugal::train
