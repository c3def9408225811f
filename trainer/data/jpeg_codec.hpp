#pragma once

// JPEG decoding and encoding with libturbojpeg. Each thread uses its own TurboJPEG handle
// (handles are not thread-safe), created on first use and freed at thread exit.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace frugal::train {

struct JpegHeader {
  int width = 0;
  int height = 0;
};

// An 8-bit RGB image, row-major, 3 bytes per pixel.
struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> pixels;
};

// Reads the frame size. Throws frugal::Error(InvalidArgument) naming `name` if the data is
// not a JPEG.
JpegHeader read_jpeg_header(std::span<const std::uint8_t> jpeg, const std::string& name);

// Decodes to RGB (grayscale is replicated, CMYK/YCCK converted), downscaled by the largest
// of libjpeg's DCT factors 1/2, 1/4, 1/8 that keeps both sides >= min_width / min_height (0:
// full size). Fatal decoder errors throw frugal::Error(InvalidArgument) naming `name`;
// libjpeg warnings (e.g. extraneous bytes) are tolerated, as PIL does.
RgbImage decode_jpeg(std::span<const std::uint8_t> jpeg, const std::string& name, int min_width = 0,
                     int min_height = 0);

// Encodes 8-bit pixels (channels 1 = grayscale JPEG, 3 = RGB with 4:4:4 sampling) at
// `quality` 1..100.
std::vector<std::uint8_t> encode_jpeg(std::span<const std::uint8_t> pixels, int width, int height,
                                      int channels, int quality);

}  // namespace frugal::train
