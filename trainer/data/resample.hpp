#pragma once

// Bilinear crop-and-resize from 8-bit interleaved pixels to normalised planar floats, the one
// image operation the image-folder pipeline needs (random-resized-crop, resize + centre crop,
// flip and normalise in a single pass). Written by hand rather than with
// torch::nn::functional::interpolate so that loader threads never enter LibTorch's
// intra-op thread pool and no intermediate tensors are allocated.

#include <array>
#include <cstdint>
#include <span>

namespace frugal::train {

// A region of the source image in pixel units (may be fractional).
struct CropBox {
  double x = 0, y = 0, width = 0, height = 0;
};

struct Normalisation {
  // out = (pixel / 255 - mean[c]) / std[c]
  std::array<float, 3> mean{0, 0, 0};
  std::array<float, 3> std{1, 1, 1};
};

// Samples `box` of the source (width × height × in_channels bytes, in_channels 1 or 3) onto
// an out_size × out_size grid with half-pixel-centre bilinear interpolation (as
// torch's interpolate with align_corners=false, without antialiasing), mirrored left-right
// when `flip`, and writes out_channels planes (out_channels 1 or 3; a 1-channel source is
// replicated) to `out` ([C, S, S], row-major).
void resample_bilinear(std::span<const std::uint8_t> source, int width, int height, int in_channels,
                       CropBox box, int out_size, bool flip, const Normalisation& norm,
                       int out_channels, std::span<float> out);

}  // namespace frugal::train
