#include "jpeg_codec.hpp"

#include <turbojpeg.h>

#include <frugal/error.hpp>
#include <memory>

namespace frugal::train {

namespace {

struct TjDestroyer {
  void operator()(void* handle) const noexcept { tjDestroy(handle); }
};
using TjHandle = std::unique_ptr<void, TjDestroyer>;

struct TjFreer {
  void operator()(unsigned char* buffer) const noexcept { tjFree(buffer); }
};

tjhandle decompressor() {
  thread_local TjHandle handle(tjInitDecompress());
  if (!handle)
    throw Error(ErrorCode::Internal, std::string("tjInitDecompress: ") + tjGetErrorStr());
  return handle.get();
}

tjhandle compressor() {
  thread_local TjHandle handle(tjInitCompress());
  if (!handle) throw Error(ErrorCode::Internal, std::string("tjInitCompress: ") + tjGetErrorStr());
  return handle.get();
}

[[noreturn]] void corrupt(tjhandle handle, const std::string& name, const char* stage) {
  throw Error(ErrorCode::InvalidArgument, "corrupt or unsupported JPEG '" + name + "' (" + stage +
                                              ": " + tjGetErrorStr2(handle) + ")");
}

struct Header {
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
};

Header header_of(tjhandle handle, std::span<const std::uint8_t> jpeg, const std::string& name) {
  Header h;
  if (jpeg.empty() ||
      tjDecompressHeader3(handle, jpeg.data(), static_cast<unsigned long>(jpeg.size()), &h.width,
                          &h.height, &h.subsampling, &h.colorspace) != 0) {
    corrupt(handle, name, "header");
  }
  if (h.width <= 0 || h.height <= 0) corrupt(handle, name, "header");
  return h;
}

}  // namespace

JpegHeader read_jpeg_header(std::span<const std::uint8_t> jpeg, const std::string& name) {
  const Header h = header_of(decompressor(), jpeg, name);
  return {h.width, h.height};
}

RgbImage decode_jpeg(std::span<const std::uint8_t> jpeg, const std::string& name, int min_width,
                     int min_height) {
  tjhandle handle = decompressor();
  const Header h = header_of(handle, jpeg, name);
  // Largest reduction (smallest factor) among 1/8, 1/4, 1/2 that still covers the request;
  // the DCT-domain downscale is both faster and better filtered than decoding in full.
  int width = h.width, height = h.height;
  for (const int denominator : {8, 4, 2}) {
    const int w = (h.width + denominator - 1) / denominator;
    const int ht = (h.height + denominator - 1) / denominator;
    if (min_width > 0 && min_height > 0 && w >= min_width && ht >= min_height) {
      width = w;
      height = ht;
      break;
    }
  }
  const bool cmyk = h.colorspace == TJCS_CMYK || h.colorspace == TJCS_YCCK;
  const int pixel_size = cmyk ? 4 : 3;
  std::vector<std::uint8_t> decoded(static_cast<std::size_t>(width) * height * pixel_size);
  const int status =
      tjDecompress2(handle, jpeg.data(), static_cast<unsigned long>(jpeg.size()), decoded.data(),
                    width, 0, height, cmyk ? TJPF_CMYK : TJPF_RGB, 0);
  if (status != 0 && tjGetErrorCode(handle) == TJERR_FATAL) corrupt(handle, name, "decode");
  RgbImage image{width, height, {}};
  if (!cmyk) {
    image.pixels = std::move(decoded);
    return image;
  }
  // libjpeg returns Adobe-style inverted CMYK for both CMYK and YCCK files.
  image.pixels.resize(static_cast<std::size_t>(width) * height * 3);
  for (std::size_t p = 0; p < static_cast<std::size_t>(width) * height; ++p) {
    const unsigned k = decoded[4 * p + 3];
    for (int c = 0; c < 3; ++c)
      image.pixels[3 * p + c] = static_cast<std::uint8_t>(decoded[4 * p + c] * k / 255);
  }
  return image;
}

std::vector<std::uint8_t> encode_jpeg(std::span<const std::uint8_t> pixels, int width, int height,
                                      int channels, int quality) {
  require(channels == 1 || channels == 3, "channels", "must be 1 or 3");
  require(quality >= 1 && quality <= 100, "quality", "must be in 1..100");
  require(width > 0 && height > 0, "width, height", "must be positive");
  require(pixels.size() == static_cast<std::size_t>(width) * height * channels, "pixels",
          "size must be width * height * channels");
  tjhandle handle = compressor();
  unsigned char* raw = nullptr;
  unsigned long size = 0;
  const int status =
      tjCompress2(handle, pixels.data(), width, 0, height, channels == 1 ? TJPF_GRAY : TJPF_RGB,
                  &raw, &size, channels == 1 ? TJSAMP_GRAY : TJSAMP_444, quality, 0);
  std::unique_ptr<unsigned char, TjFreer> owned(raw);
  if (status != 0) {
    throw Error(ErrorCode::Internal, std::string("tjCompress2: ") + tjGetErrorStr2(handle));
  }
  return {raw, raw + size};
}

}  // namespace frugal::train
