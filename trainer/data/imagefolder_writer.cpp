#include "imagefolder_writer.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <frugal/error.hpp>
#include <fstream>

#include "idx_file.hpp"
#include "jpeg_codec.hpp"
#include "resample.hpp"

namespace frugal::train {

namespace fs = std::filesystem;

namespace {

constexpr const char* kFashionMnistClasses[] = {"tshirt_top", "trouser",   "pullover", "dress",
                                                "coat",       "sandal",    "shirt",    "sneaker",
                                                "bag",        "ankle_boot"};

[[noreturn]] void bad(const std::string& message) {
  throw Error(ErrorCode::InvalidArgument, message);
}

std::vector<std::string> class_names(std::size_t count, bool fashion) {
  const std::size_t digits = std::to_string(count - 1).size();
  std::vector<std::string> names;
  for (std::size_t label = 0; label < count; ++label) {
    std::string name = std::to_string(label);
    name.insert(0, digits - name.size(), '0');
    if (fashion && count == std::size(kFashionMnistClasses)) {
      name += std::string("_") + kFashionMnistClasses[label];
    }
    names.push_back(std::move(name));
  }
  return names;
}

void check_empty(const fs::path& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_empty(dir, ec)) {
    bad("output folder '" + dir.string() + "' already exists and is not empty");
  }
}

void write_file(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) bad("cannot write '" + path.string() + "'");
}

// Writes the first `count` images of one split; returns how many were written.
std::size_t write_split(const ImageFolderWriteOptions& options, const std::string& split_name,
                        const IdxImages& images, const std::vector<std::uint8_t>& labels,
                        std::size_t count, const std::vector<std::string>& classes) {
  const fs::path split_dir = options.out / split_name;
  const int side = options.size > 0 ? options.size : static_cast<int>(images.rows);
  const Normalisation bytes_out{{0, 0, 0}, {1 / 255.0f, 1 / 255.0f, 1 / 255.0f}};
  std::vector<float> resized(static_cast<std::size_t>(side) * side);
  std::vector<std::uint8_t> pixels(resized.size());
  std::size_t reported = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const fs::path class_dir = split_dir / classes[labels[i]];
    fs::create_directories(class_dir);
    const auto image = images.image(i);
    if (side == static_cast<int>(images.rows)) {
      std::copy(image.begin(), image.end(), pixels.begin());
    } else {
      const int native = static_cast<int>(images.rows);
      resample_bilinear(image, native, native, 1, {0, 0, double(native), double(native)}, side,
                        false, bytes_out, 1, resized);
      for (std::size_t p = 0; p < pixels.size(); ++p) {
        pixels[p] = static_cast<std::uint8_t>(std::clamp(std::lround(resized[p]), 0l, 255l));
      }
    }
    char name[32];
    std::snprintf(name, sizeof name, "%06zu.JPEG", i);
    write_file(class_dir / name, encode_jpeg(pixels, side, side, 1, options.quality));
    if (options.progress && (10 * (i + 1) / count > reported || i + 1 == count)) {
      reported = 10 * (i + 1) / count;
      options.progress(split_name + ": " + std::to_string(i + 1) + "/" + std::to_string(count) +
                       " images");
    }
  }
  return count;
}

}  // namespace

ImageFolderWriteSummary write_imagefolder(const ImageFolderWriteOptions& options) {
  require(options.quality >= 1 && options.quality <= 100, "quality", "must be in 1..100");
  require(options.size >= 0 && options.size <= 4096, "size", "must be in 0..4096 (0: native)");
  require(!options.out.empty(), "out", "must name a folder");
  const bool fashion = options.idx == "fashion-mnist";
  const fs::path dir = fashion ? fs::path(kFashionMnistDir) : fs::path(options.idx);
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) bad("IDX directory '" + dir.string() + "' does not exist");
  check_empty(options.out / "train");
  check_empty(options.out / "val");

  ImageFolderWriteSummary summary;
  struct Split {
    std::string name, prefix;
    std::size_t limit;
  };
  for (const Split& split :
       {Split{"train", "train", options.limit_train}, Split{"val", "t10k", options.limit_val}}) {
    const fs::path image_path = find_idx_file(dir, split.prefix + "-images-idx3-ubyte");
    const fs::path label_path = find_idx_file(dir, split.prefix + "-labels-idx1-ubyte");
    const IdxImages images = read_idx_images(image_path);
    const std::vector<std::uint8_t> labels = read_idx_labels(label_path);
    if (images.count != labels.size()) {
      bad("IDX files disagree: '" + image_path.string() + "' has " + std::to_string(images.count) +
          " images but '" + label_path.string() + "' has " + std::to_string(labels.size()) +
          " labels");
    }
    if (images.rows != images.cols) bad("IDX file '" + image_path.string() + "': not square");
    const std::size_t count = split.limit == 0 ? images.count : std::min(split.limit, images.count);
    if (summary.classes.empty()) {
      const auto largest = *std::max_element(labels.begin(), labels.end());
      summary.classes = class_names(std::size_t{largest} + 1, fashion);
      std::vector<bool> seen(summary.classes.size());
      for (std::size_t i = 0; i < count; ++i) seen[labels[i]] = true;
      for (std::size_t c = 0; c < seen.size(); ++c) {
        if (!seen[c]) {
          bad("the first " + std::to_string(count) + " train images leave class '" +
              summary.classes[c] + "' without images; raise --limit-train");
        }
      }
    } else {
      for (std::size_t i = 0; i < count; ++i) {
        if (labels[i] >= summary.classes.size()) {
          bad("IDX file '" + label_path.string() + "': label " + std::to_string(labels[i]) +
              " is not a train class");
        }
      }
    }
    const std::size_t written =
        write_split(options, split.name, images, labels, count, summary.classes);
    (split.name == "train" ? summary.train : summary.val) = written;
  }
  return summary;
}

}  // namespace frugal::train
