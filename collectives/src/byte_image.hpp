#pragma once

// The byte images the collectives' state objects save for checkpoints (AllreduceState,
// GradientBuckets, PowerSgdState, Bmuf): values appended in this machine's byte order, read back
// with a bounds check on every read, so a truncated or corrupt image is InvalidArgument
// "<what> image: <why>" and never a read past the end.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "frugal/error.hpp"

namespace frugal::detail {

class ImageWriter {
 public:
  template <typename T>
  requires std::is_trivially_copyable_v<T>
  void put(T value) {
    const std::size_t at = bytes_.size();
    bytes_.resize(at + sizeof value);
    std::memcpy(bytes_.data() + at, &value, sizeof value);
  }
  void put_bytes(std::span<const std::byte> bytes) {
    bytes_.insert(bytes_.end(), bytes.begin(), bytes.end());
  }
  void put_floats(std::span<const float> values) { put_bytes(std::as_bytes(values)); }
  // A length (64 bits) and the bytes.
  void put_blob(std::span<const std::byte> blob) {
    put<std::uint64_t>(blob.size());
    put_bytes(blob);
  }
  std::span<const std::byte> bytes() const noexcept { return bytes_; }
  std::vector<std::byte> take() noexcept { return std::move(bytes_); }

 private:
  std::vector<std::byte> bytes_;
};

class ImageReader {
 public:
  ImageReader(std::span<const std::byte> bytes, std::string_view what)
      : bytes_(bytes), what_(what) {}

  template <typename T>
  requires std::is_trivially_copyable_v<T> T get() {
    T value;
    std::memcpy(&value, get_bytes(sizeof value).data(), sizeof value);
    return value;
  }
  std::span<const std::byte> get_bytes(std::uint64_t size) {
    if (size > bytes_.size() - at_) malformed("truncated");
    const std::span<const std::byte> out = bytes_.subspan(at_, static_cast<std::size_t>(size));
    at_ += static_cast<std::size_t>(size);
    return out;
  }
  // What put_blob wrote.
  std::span<const std::byte> get_blob() { return get_bytes(get<std::uint64_t>()); }
  // `count` floats, refused if any is NaN or Inf (`values` names them in the message).
  std::vector<float> get_floats(std::uint64_t count, std::string_view values) {
    if (count > (bytes_.size() - at_) / sizeof(float)) malformed("truncated");
    std::vector<float> out(static_cast<std::size_t>(count));
    const std::span<const std::byte> raw = get_bytes(count * sizeof(float));
    if (!out.empty()) std::memcpy(out.data(), raw.data(), raw.size());
    for (const float v : out) {
      if (!std::isfinite(v)) malformed(std::string(values) + " holds NaN or Inf");
    }
    return out;
  }
  std::span<const std::byte> rest() const noexcept { return bytes_.subspan(at_); }
  bool done() const noexcept { return at_ == bytes_.size(); }

  [[noreturn]] void malformed(const std::string& why) const {
    throw Error(ErrorCode::InvalidArgument, std::string(what_) + " image: " + why);
  }

 private:
  std::span<const std::byte> bytes_;
  std::string_view what_;
  std::size_t at_ = 0;
};

}  // namespace frugal::detail
