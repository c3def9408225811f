#pragma once

// Reader and writer for IDX files (the MNIST / Fashion-MNIST format: a big-endian header of
// magic number and dimensions, then unsigned bytes), gzip-compressed or plain.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

namespace frugal::train {

// Where the Debian package dataset-fashion-mnist installs the files.
inline constexpr const char* kFashionMnistDir = "/usr/share/datasets/fashion-mnist";

// `base` ("train-images-idx3-ubyte") inside dir, plain or with .gz; throws naming both
// candidates when neither exists.
std::filesystem::path find_idx_file(const std::filesystem::path& dir, const std::string& base);

struct IdxImages {
  std::size_t count = 0;
  std::size_t rows = 0;
  std::size_t cols = 0;
  std::vector<std::uint8_t> pixels;  // count * rows * cols, row-major per image

  std::span<const std::uint8_t> image(std::size_t index) const {
    return std::span(pixels).subspan(index * rows * cols, rows * cols);
  }
};

// Both throw frugal::Error(InvalidArgument) naming `path` when the file is missing, not IDX
// (wrong magic number), of the wrong rank, or truncated / longer than its header says.
// Files ending in .gz are decompressed (zlib also reads plain files transparently, so a
// misnamed plain file loads too).
IdxImages read_idx_images(const std::filesystem::path& path);                  // magic 0x00000803
std::vector<std::uint8_t> read_idx_labels(const std::filesystem::path& path);  // 0x00000801

// Writes an IDX file (gzip when `gzip`), e.g. for tests: dims {n, rows, cols} for images,
// {n} for labels; data.size() must equal their product.
void write_idx(const std::filesystem::path& path, std::span<const std::uint32_t> dims,
               std::span<const std::uint8_t> data, bool gzip);

}  // namespace frugal::train
