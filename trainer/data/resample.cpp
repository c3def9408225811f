#include "resample.hpp"

#include <algorithm>
#include <cmath>
#include <frugal/error.hpp>
#include <vector>

namespace frugal::train {

namespace {

struct Tap {
  int first = 0, second = 0;  // source indices
  float weight = 0;           // of `second`
};

// Source taps of the out_size output positions along one axis.
std::vector<Tap> taps(double start, double extent, int out_size, int limit) {
  std::vector<Tap> result(static_cast<std::size_t>(out_size));
  const double scale = extent / out_size;
  for (int o = 0; o < out_size; ++o) {
    const double s = std::clamp(start + (o + 0.5) * scale - 0.5, 0.0, double(limit - 1));
    const int first = static_cast<int>(std::floor(s));
    const int second = std::min(first + 1, limit - 1);
    result[static_cast<std::size_t>(o)] = {first, second, static_cast<float>(s - first)};
  }
  return result;
}

}  // namespace

void resample_bilinear(std::span<const std::uint8_t> source, int width, int height, int in_channels,
                       CropBox box, int out_size, bool flip, const Normalisation& norm,
                       int out_channels, std::span<float> out) {
  require(in_channels == 1 || in_channels == 3, "in_channels", "must be 1 or 3");
  require(out_channels == 1 || out_channels == 3, "out_channels", "must be 1 or 3");
  require(width > 0 && height > 0 && out_size > 0, "size", "must be positive");
  require(source.size() == static_cast<std::size_t>(width) * height * in_channels, "source",
          "size must be width * height * channels");
  require(out.size() == static_cast<std::size_t>(out_channels) * out_size * out_size, "out",
          "size must be channels * out_size^2");
  require(box.width > 0 && box.height > 0, "box", "must have a positive size");
  std::vector<Tap> xs = taps(box.x, box.width, out_size, width);
  const std::vector<Tap> ys = taps(box.y, box.height, out_size, height);
  if (flip) std::reverse(xs.begin(), xs.end());

  const std::size_t plane = static_cast<std::size_t>(out_size) * out_size;
  std::array<float, 3> scale{}, shift{};
  for (int c = 0; c < out_channels; ++c) {
    scale[c] = 1.0f / (255.0f * norm.std[c]);
    shift[c] = -norm.mean[c] / norm.std[c];
  }
  const std::size_t stride = static_cast<std::size_t>(width) * in_channels;
  for (int oy = 0; oy < out_size; ++oy) {
    const Tap& ty = ys[static_cast<std::size_t>(oy)];
    const std::uint8_t* row0 = source.data() + ty.first * stride;
    const std::uint8_t* row1 = source.data() + ty.second * stride;
    for (int ox = 0; ox < out_size; ++ox) {
      const Tap& tx = xs[static_cast<std::size_t>(ox)];
      const std::size_t a = static_cast<std::size_t>(tx.first) * in_channels;
      const std::size_t b = static_cast<std::size_t>(tx.second) * in_channels;
      const std::size_t at = static_cast<std::size_t>(oy) * out_size + ox;
      for (int c = 0; c < out_channels; ++c) {
        const int ic = in_channels == 1 ? 0 : c;
        const float top = row0[a + ic] + tx.weight * (float(row0[b + ic]) - row0[a + ic]);
        const float bottom = row1[a + ic] + tx.weight * (float(row1[b + ic]) - row1[a + ic]);
        const float value = top + ty.weight * (bottom - top);
        out[c * plane + at] = value * scale[c] + shift[c];
      }
    }
  }
}

}  // namespace frugal::train
