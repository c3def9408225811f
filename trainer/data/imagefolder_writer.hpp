#pragma once

// Writes an ImageNet-layout JPEG folder from IDX files (the engine of frugal-make-imagefolder),
// so the image-folder pipeline can be tested and demonstrated on real images.

#include <cstddef>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace frugal::train {

struct ImageFolderWriteOptions {
  std::string idx = "fashion-mnist";  // "fashion-mnist" or an IDX directory
  std::filesystem::path out;
  std::size_t limit_train = 0;  // first N train images (0: all)
  std::size_t limit_val = 0;    // first N t10k images (0: all)
  int size = 0;                 // output side length (0: the IDX size), bilinear resize
  int quality = 95;             // JPEG quality 1..100
  std::function<void(const std::string&)> progress;  // one line per ~10% of each split
};

struct ImageFolderWriteSummary {
  std::vector<std::string> classes;  // folder names, in label order
  std::size_t train = 0;
  std::size_t val = 0;
};

// Class folders are named "<label>_<name>" for Fashion-MNIST ("0_tshirt_top" … "9_ankle_boot")
// and by the zero-padded label otherwise ("0" … "9", or "00" … "42"), so that their sorted
// order is the label order; files are "<position in the IDX file, 6 digits>.JPEG", grayscale
// JPEGs. Every class must keep at least one train image under limit_train; val classes
// without images get no folder. Throws frugal::Error(InvalidArgument) for bad options, a
// bad IDX source, or when OUT/train or OUT/val already exists and is not empty.
ImageFolderWriteSummary write_imagefolder(const ImageFolderWriteOptions& options);

}  // namespace frugal::train
