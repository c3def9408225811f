#pragma once

// Helpers shared by the trainer data tests: scratch folders, hand-made IDX directories and
// error-message checks.

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <frugal/error.hpp>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <string>
#include <vector>

#include "data/idx_file.hpp"

namespace frugal::train::testing {

// A fresh directory under the system temp dir, removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("frugal-data-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Writes DIR/<prefix>-images-idx3-ubyte[.gz] and the labels for `count` size × size images.
inline void write_idx_split(const std::filesystem::path& dir, const std::string& prefix,
                            std::uint32_t size, const std::vector<std::uint8_t>& pixels,
                            const std::vector<std::uint8_t>& labels, bool gzip) {
  const std::string suffix = gzip ? ".gz" : "";
  const std::uint32_t image_dims[] = {static_cast<std::uint32_t>(labels.size()), size, size};
  const std::uint32_t label_dims[] = {static_cast<std::uint32_t>(labels.size())};
  write_idx(dir / (prefix + "-images-idx3-ubyte" + suffix), image_dims, pixels, gzip);
  write_idx(dir / (prefix + "-labels-idx1-ubyte" + suffix), label_dims, labels, gzip);
}

inline std::vector<std::uint8_t> read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::filesystem::path& path, const std::vector<std::uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
}

// Runs `action`, expects a frugal::Error(InvalidArgument) whose message contains every one of
// `needles`.
inline void expect_invalid_argument(const std::function<void()>& action,
                                    std::initializer_list<std::string> needles) {
  try {
    action();
    ADD_FAILURE() << "expected frugal::Error(InvalidArgument), nothing was thrown";
  } catch (const Error& error) {
    EXPECT_EQ(error.code(), ErrorCode::InvalidArgument) << error.what();
    for (const std::string& needle : needles) {
      EXPECT_NE(std::string(error.what()).find(needle), std::string::npos)
          << "message '" << error.what() << "' does not contain '" << needle << "'";
    }
  }
}

inline bool have_fashion_mnist() {
  std::error_code ec;
  return std::filesystem::is_directory(kFashionMnistDir, ec);
}

}  // namespace frugal::train::testing
