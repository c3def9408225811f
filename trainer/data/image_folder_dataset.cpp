#include "image_folder_dataset.hpp"

#include <algorithm>
#include <cmath>
#include <frugal/error.hpp>
#include <fstream>
#include <iostream>
#include <numeric>

#include "jpeg_codec.hpp"
#include "random.hpp"

namespace frugal::train {

namespace fs = std::filesystem;

namespace {

[[noreturn]] void bad(const std::string& message) {
  throw Error(ErrorCode::InvalidArgument, message);
}

bool hidden(const fs::path& path) {
  return path.filename().string().starts_with(".");
}

std::vector<std::string> class_folders(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) bad("image folder '" + dir.string() + "' does not exist");
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_directory() && !hidden(entry.path())) names.push_back(entry.path().filename());
  }
  if (names.empty()) bad("image folder '" + dir.string() + "' has no class folders");
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.is_regular_file() && !hidden(entry.path())) files.push_back(entry.path());
  }
  if (files.empty()) bad("class folder '" + dir.string() + "' is empty");
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::uint8_t> read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) bad("cannot open image file '" + path.string() + "'");
  const std::streamoff size = in.tellg();
  std::vector<std::uint8_t> bytes(size > 0 ? static_cast<std::size_t>(size) : 0);
  in.seekg(0);
  if (size < 0 || !in.read(reinterpret_cast<char*>(bytes.data()), size)) {
    bad("cannot read image file '" + path.string() + "'");
  }
  return bytes;
}

}  // namespace

CropBox random_resized_crop_box(int width, int height, std::uint64_t rng_seed) {
  CounterRng rng(rng_seed);
  const double area = double(width) * height;
  const double log_low = std::log(3.0 / 4.0), log_high = std::log(4.0 / 3.0);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * rng.uniform(0.08, 1.0);
    const double ratio = std::exp(rng.uniform(log_low, log_high));
    const int w = static_cast<int>(std::lround(std::sqrt(target * ratio)));
    const int h = static_cast<int>(std::lround(std::sqrt(target / ratio)));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      const auto y = rng.below(static_cast<std::uint64_t>(height - h + 1));
      const auto x = rng.below(static_cast<std::uint64_t>(width - w + 1));
      return {double(x), double(y), double(w), double(h)};
    }
  }
  // Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
  double w = width, h = height;
  const double in_ratio = double(width) / height;
  if (in_ratio < 3.0 / 4.0) {
    h = std::lround(w / (3.0 / 4.0));
  } else if (in_ratio > 4.0 / 3.0) {
    w = std::lround(h * (4.0 / 3.0));
  }
  return {(width - w) / 2.0, (height - h) / 2.0, w, h};
}

CropBox centre_crop_box(int width, int height, int size) {
  const double resized_short = size * 256.0 / 224.0;
  const double side = size * std::min(width, height) / resized_short;  // in source pixels
  return {(width - side) / 2.0, (height - side) / 2.0, side, side};
}

ImageFolderDataset::ImageFolderDataset(const fs::path& root, Split split,
                                       const DataOptions& options)
    : root_(root),
      split_(split),
      augment_(options.augment && split == Split::Train),
      skip_corrupt_(options.skip_corrupt),
      image_size_(options.image_size) {
  require(options.image_size >= 1, "image_size", "must be >= 1");
  std::error_code ec;
  if (!fs::is_directory(root, ec)) bad("image folder '" + root.string() + "' does not exist");
  classes_ = class_folders(root / "train");
  const fs::path split_dir = root / std::string(enum_name(split));
  const std::vector<std::string> present =
      split == Split::Train ? classes_ : class_folders(split_dir);
  for (const std::string& name : present) {
    const auto it = std::lower_bound(classes_.begin(), classes_.end(), name);
    if (it == classes_.end() || *it != name) {
      bad("class folder '" + (split_dir / name).string() + "' has no counterpart in '" +
          (root / "train").string() + "'");
    }
    const auto label = static_cast<std::int64_t>(it - classes_.begin());
    for (fs::path& file : files_in(split_dir / name)) {
      files_.push_back(std::move(file));
      labels_.push_back(label);
    }
  }
}

void ImageFolderDataset::decode_into(std::size_t index, std::uint64_t seed,
                                     std::span<float> out) const {
  const fs::path& path = files_[index];
  const std::vector<std::uint8_t> bytes = read_bytes(path);
  const JpegHeader header = read_jpeg_header(bytes, path.string());
  const int size = image_size_;
  CounterRng rng(seed);
  const bool flip = augment_ && rng.coin();
  const CropBox box = augment_ ? random_resized_crop_box(header.width, header.height, rng.next())
                               : centre_crop_box(header.width, header.height, size);
  // Ask for a DCT-downscaled decode that still gives the crop box >= size pixels per side.
  const int min_width = static_cast<int>(std::ceil(header.width * size / box.width));
  const int min_height = static_cast<int>(std::ceil(header.height * size / box.height));
  const RgbImage image = decode_jpeg(bytes, path.string(), min_width, min_height, true);
  const double sx = double(image.width) / header.width, sy = double(image.height) / header.height;
  const CropBox scaled{box.x * sx, box.y * sy, box.width * sx, box.height * sy};
  resample_bilinear(image.pixels, image.width, image.height, image.channels, scaled, size, flip,
                    kImageNetNormalisation, 3, out);
}

Example ImageFolderDataset::get(std::size_t index, std::uint64_t seed) const {
  torch::Tensor image = torch::empty({3, image_size_, image_size_}, torch::kFloat32);
  const std::int64_t label = get_into(
      index, seed, std::span(image.data_ptr<float>(), static_cast<std::size_t>(image.numel())));
  return {image, label};
}

std::int64_t ImageFolderDataset::get_into(std::size_t index, std::uint64_t seed,
                                          std::span<float> out) const {
  if (index >= size()) {
    bad("image folder '" + root_.string() + "': example index " + std::to_string(index) +
        " out of range (size " + std::to_string(size()) + ")");
  }
  require(out.size() == static_cast<std::size_t>(3) * image_size_ * image_size_, "out",
          "must hold channels * image_size^2 floats");
  for (std::size_t tried = 0; tried < size(); ++tried) {
    const std::size_t candidate = (index + tried) % size();
    try {
      decode_into(candidate, seed, out);
      return labels_[candidate];
    } catch (const Error& error) {
      if (!skip_corrupt_ || error.code() != ErrorCode::InvalidArgument) throw;
      std::lock_guard lock(warned_mutex_);
      if (warned_.insert(candidate).second) {
        std::cerr << "warning: skipping " << error.what()
                  << " (--skip-corrupt: the next readable image in folder order replaces it)\n";
      }
    }
  }
  bad("image folder '" + root_.string() + "': no readable image at all");
}

std::string ImageFolderDataset::describe() const {
  return "imagefolder " + root_.string() + " " + std::string(enum_name(split_)) + ": " +
         std::to_string(size()) + " images, " + std::to_string(classes_.size()) + " classes, 3x" +
         std::to_string(image_size_) + "x" + std::to_string(image_size_) +
         (augment_ ? ", random-resized-crop + flip" : ", resize + centre crop");
}

}  // namespace frugal::train
