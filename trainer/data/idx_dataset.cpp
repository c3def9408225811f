#include "idx_dataset.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <frugal/error.hpp>
#include <map>
#include <mutex>

#include "random.hpp"

namespace frugal::train {

namespace {

std::string split_prefix(Split split) {
  return split == Split::Train ? "train" : "t10k";
}

void check_square(const IdxImages& images, const std::filesystem::path& path) {
  if (images.rows != images.cols) {
    throw Error(ErrorCode::InvalidArgument,
                "IDX file '" + path.string() + "': images are " + std::to_string(images.rows) +
                    "x" + std::to_string(images.cols) + ", only square images are supported");
  }
}

void check_counts(std::size_t images, std::size_t labels, const std::filesystem::path& image_path,
                  const std::filesystem::path& label_path) {
  if (images != labels) {
    throw Error(ErrorCode::InvalidArgument, "IDX files disagree: '" + image_path.string() +
                                                "' has " + std::to_string(images) +
                                                " images but '" + label_path.string() + "' has " +
                                                std::to_string(labels) + " labels");
  }
}

IdxStats compute_stats(const IdxImages& images, const std::vector<std::uint8_t>& labels) {
  std::array<std::uint64_t, 256> histogram{};
  for (const std::uint8_t p : images.pixels) ++histogram[p];
  double sum = 0, sum_sq = 0;
  for (int v = 0; v < 256; ++v) {
    const double x = v / 255.0;
    sum += histogram[v] * x;
    sum_sq += histogram[v] * x * x;
  }
  const double n = static_cast<double>(images.pixels.size());
  IdxStats stats;
  stats.mean = sum / n;
  stats.std = std::sqrt(std::max(sum_sq / n - stats.mean * stats.mean, 0.0));
  if (stats.std < 1e-12) stats.std = 1;  // a constant image set: only centre it
  stats.num_classes = 1 + *std::max_element(labels.begin(), labels.end());
  return stats;
}

std::mutex stats_mutex;
std::map<std::string, IdxStats> stats_cache;

}  // namespace

IdxStats idx_train_stats(const std::filesystem::path& dir) {
  std::error_code ec;
  const std::string key = std::filesystem::weakly_canonical(dir, ec).string();
  {
    std::lock_guard lock(stats_mutex);
    if (auto it = stats_cache.find(key); it != stats_cache.end()) return it->second;
  }
  const auto image_path = find_idx_file(dir, "train-images-idx3-ubyte");
  const auto label_path = find_idx_file(dir, "train-labels-idx1-ubyte");
  const IdxImages images = read_idx_images(image_path);
  const auto labels = read_idx_labels(label_path);
  check_counts(images.count, labels.size(), image_path, label_path);
  const IdxStats stats = compute_stats(images, labels);
  std::lock_guard lock(stats_mutex);
  stats_cache.emplace(key, stats);
  return stats;
}

IdxAugmentation draw_idx_augmentation(std::uint64_t seed, int pad) {
  CounterRng rng(seed);
  IdxAugmentation aug;
  const auto range = static_cast<std::uint64_t>(2 * pad + 1);
  aug.dx = static_cast<int>(rng.below(range));
  aug.dy = static_cast<int>(rng.below(range));
  aug.flip = rng.coin();
  return aug;
}

void pad_crop_flip(std::span<const std::uint8_t> image, int size, int pad, IdxAugmentation aug,
                   float mean, float std, std::span<float> out) {
  require(image.size() == static_cast<std::size_t>(size) * size, "image", "must be size^2 bytes");
  require(out.size() == image.size(), "out", "must be size^2 floats");
  const float scale = 1.0f / (255.0f * std);
  const float background = -mean / std;  // a zero pixel, normalised
  for (int y = 0; y < size; ++y) {
    const int sy = y + aug.dy - pad;
    for (int x = 0; x < size; ++x) {
      const int sx = (aug.flip ? size - 1 - x : x) + aug.dx - pad;
      const bool inside = sy >= 0 && sy < size && sx >= 0 && sx < size;
      out[static_cast<std::size_t>(y) * size + x] =
          inside ? image[static_cast<std::size_t>(sy) * size + sx] * scale + background
                 : background;
    }
  }
}

IdxDataset::IdxDataset(const std::filesystem::path& dir, std::string name, Split split,
                       const DataOptions& options)
    : name_(std::move(name)), split_(split), augment_(options.augment && split == Split::Train) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    throw Error(ErrorCode::InvalidArgument, "IDX directory '" + dir.string() + "' does not exist");
  }
  const std::string prefix = split_prefix(split);
  const auto image_path = find_idx_file(dir, prefix + "-images-idx3-ubyte");
  const auto label_path = find_idx_file(dir, prefix + "-labels-idx1-ubyte");
  images_ = read_idx_images(image_path);
  check_square(images_, image_path);
  labels_ = read_idx_labels(label_path);
  check_counts(images_.count, labels_.size(), image_path, label_path);
  if (split == Split::Train) {
    stats_ = compute_stats(images_, labels_);
    std::lock_guard lock(stats_mutex);
    stats_cache.emplace(std::filesystem::weakly_canonical(dir, ec).string(), stats_);
  } else {
    stats_ = idx_train_stats(dir);
    const auto largest = *std::max_element(labels_.begin(), labels_.end());
    if (largest >= stats_.num_classes) {
      throw Error(ErrorCode::InvalidArgument, "IDX file '" + label_path.string() + "': label " +
                                                  std::to_string(largest) +
                                                  " is outside the train split's " +
                                                  std::to_string(stats_.num_classes) + " classes");
    }
  }
}

Example IdxDataset::get(std::size_t index, std::uint64_t seed) const {
  if (index >= size()) {
    throw Error(ErrorCode::InvalidArgument, name_ + ": example index " + std::to_string(index) +
                                                " out of range (size " + std::to_string(size()) +
                                                ")");
  }
  const int side = static_cast<int>(images_.rows);
  const IdxAugmentation aug =
      augment_ ? draw_idx_augmentation(seed, kPad) : IdxAugmentation{kPad, kPad, false};
  torch::Tensor image = torch::empty({1, side, side}, torch::kFloat32);
  pad_crop_flip(images_.image(index), side, kPad, aug, static_cast<float>(stats_.mean),
                static_cast<float>(stats_.std),
                std::span(image.data_ptr<float>(), static_cast<std::size_t>(side) * side));
  return {image, static_cast<std::int64_t>(labels_[index])};
}

std::string IdxDataset::describe() const {
  return name_ + (split_ == Split::Train ? " train" : " val") + ": " + std::to_string(size()) +
         " images, " + std::to_string(num_classes()) + " classes, 1x" +
         std::to_string(images_.rows) + "x" + std::to_string(images_.cols) +
         (augment_ ? ", pad-4 random crop + flip" : "");
}

}  // namespace frugal::train
