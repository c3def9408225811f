#include "frugal/compression/error_feedback.hpp"

#include <algorithm>
#include <cstring>
#include <string>

#include "frugal/error.hpp"

namespace frugal::compression {

namespace {
constexpr std::uint32_t kImageMagic = 0x46455246;  // "FREF"
constexpr std::uint32_t kImageVersion = 1;
constexpr std::size_t kImageHeader = 4 + 4 + 8 + 4;  // magic, version, size, decay
}  // namespace

ErrorFeedback::ErrorFeedback(std::size_t size, float decay) : residual_(size, 0.0f), decay_(decay) {
  require(decay >= 0.0f && decay <= 1.0f, "decay", "must be in [0, 1]");
}

void ErrorFeedback::check_range(std::size_t count, std::size_t offset) const {
  require(offset <= residual_.size() && count <= residual_.size() - offset, "offset",
          "range [offset, offset + size) exceeds the feedback buffer of " +
              std::to_string(residual_.size()) + " elements");
}

void ErrorFeedback::compensate(std::span<float> grad, std::size_t offset) const {
  check_range(grad.size(), offset);
  const float* r = residual_.data() + offset;
  if (decay_ == 1.0f) {
    for (std::size_t i = 0; i < grad.size(); ++i) grad[i] += r[i];
  } else {
    for (std::size_t i = 0; i < grad.size(); ++i) grad[i] += decay_ * r[i];
  }
}

void ErrorFeedback::compensate(std::span<const float> grad, std::span<float> compensated,
                               std::size_t offset) const {
  check_range(grad.size(), offset);
  require(compensated.size() == grad.size(), "compensated", "must have as many elements as grad");
  const float* r = residual_.data() + offset;
  if (decay_ == 1.0f) {
    for (std::size_t i = 0; i < grad.size(); ++i) compensated[i] = grad[i] + r[i];
  } else {
    for (std::size_t i = 0; i < grad.size(); ++i) compensated[i] = grad[i] + decay_ * r[i];
  }
}

void ErrorFeedback::absorb(std::span<const float> compensated, std::span<const float> applied,
                           std::size_t offset) {
  check_range(compensated.size(), offset);
  require(applied.size() == compensated.size(), "applied",
          "must have as many elements as compensated");
  float* r = residual_.data() + offset;
  for (std::size_t i = 0; i < compensated.size(); ++i) r[i] = compensated[i] - applied[i];
}

void ErrorFeedback::reset() noexcept {
  std::fill(residual_.begin(), residual_.end(), 0.0f);
}

std::vector<std::byte> ErrorFeedback::save() const {
  std::vector<std::byte> image(kImageHeader + 4 * residual_.size());
  const std::uint64_t size = residual_.size();
  std::memcpy(image.data(), &kImageMagic, 4);
  std::memcpy(image.data() + 4, &kImageVersion, 4);
  std::memcpy(image.data() + 8, &size, 8);
  std::memcpy(image.data() + 16, &decay_, 4);
  if (!residual_.empty()) {
    std::memcpy(image.data() + kImageHeader, residual_.data(), 4 * residual_.size());
  }
  return image;
}

void ErrorFeedback::restore(std::span<const std::byte> image) {
  if (image.size() < kImageHeader) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: truncated header");
  }
  std::uint32_t magic, version;
  std::uint64_t size;
  float decay;
  std::memcpy(&magic, image.data(), 4);
  std::memcpy(&version, image.data() + 4, 4);
  std::memcpy(&size, image.data() + 8, 8);
  std::memcpy(&decay, image.data() + 16, 4);
  if (magic != kImageMagic || version != kImageVersion) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: bad magic or version");
  }
  if (size != residual_.size()) {
    throw Error(ErrorCode::Mismatch, "error feedback image holds " + std::to_string(size) +
                                         " elements, this buffer has " +
                                         std::to_string(residual_.size()));
  }
  if (image.size() - kImageHeader != 4 * residual_.size()) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: truncated or over-long");
  }
  if (!(decay >= 0.0f && decay <= 1.0f)) {
    throw Error(ErrorCode::InvalidArgument, "error feedback image: decay out of [0, 1]");
  }
  if (!residual_.empty()) {
    std::memcpy(residual_.data(), image.data() + kImageHeader, 4 * residual_.size());
  }
  decay_ = decay;
}

std::size_t encode_with_feedback(const Compressor& compressor, ErrorFeedback& feedback,
                                 std::span<const float> grad, std::span<std::byte> out, Rng& rng,
                                 std::span<float> applied, std::size_t offset) {
  require(applied.size() == grad.size(), "applied", "must have as many elements as grad");
  // `applied` first holds the compensated gradient (the encoder's input), then is overwritten
  // with the reconstruction; the residual takes the compensated copy in between, so no extra
  // buffer is needed and the residual is untouched if encode throws.
  feedback.compensate(grad, applied, offset);
  const std::size_t bytes = compressor.encode(applied, out, rng);
  float* r = feedback.residual_.data() + offset;
  std::copy(applied.begin(), applied.end(), r);  // not memcpy: applied may be empty (null)
  compressor.decode(out.first(bytes), applied);
  for (std::size_t i = 0; i < applied.size(); ++i) r[i] -= applied[i];
  return bytes;
}

}  // namespace frugal::compression
