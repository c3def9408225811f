#include "idx_file.hpp"

#include <zlib.h>

#include <cstdio>
#include <frugal/error.hpp>
#include <memory>

namespace frugal::train {

namespace {

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& why) {
  throw Error(ErrorCode::InvalidArgument, "IDX file '" + path.string() + "': " + why);
}

struct GzCloser {
  void operator()(gzFile file) const noexcept { gzclose(file); }
};
using GzFile = std::unique_ptr<std::remove_pointer_t<gzFile>, GzCloser>;

// The whole (decompressed) content; zlib reads gzip and plain files alike.
std::vector<std::uint8_t> read_all(const std::filesystem::path& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail(path, "no such file");
  GzFile file(gzopen(path.c_str(), "rb"));
  if (!file) fail(path, "cannot open");
  gzbuffer(file.get(), 1 << 17);
  std::vector<std::uint8_t> data;
  constexpr std::size_t kChunk = 1 << 20;
  while (true) {
    const std::size_t old = data.size();
    data.resize(old + kChunk);
    const int got = gzread(file.get(), data.data() + old, kChunk);
    if (got < 0) {
      int code = 0;
      const char* message = gzerror(file.get(), &code);
      fail(path, std::string("read error: ") + (message ? message : "unknown"));
    }
    data.resize(old + static_cast<std::size_t>(got));
    if (got == 0) break;
  }
  // A gzip stream cut short reads as EOF with Z_BUF_ERROR pending.
  int code = Z_OK;
  const char* message = gzerror(file.get(), &code);
  if (code != Z_OK && code != Z_STREAM_END) {
    fail(path, std::string("truncated or corrupt gzip stream (") + (message ? message : "") + ")");
  }
  return data;
}

std::uint32_t big_endian(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

// Validates the header (unsigned-byte data of `rank` dimensions) and the total length, and
// returns the dimensions and the offset of the data.
std::vector<std::size_t> parse_header(const std::filesystem::path& path,
                                      const std::vector<std::uint8_t>& data, int rank,
                                      std::size_t& offset) {
  const std::uint32_t expected_magic = 0x00000800u | static_cast<std::uint32_t>(rank);
  if (data.size() < 4) fail(path, "truncated: shorter than the 4-byte magic number");
  const std::uint32_t magic = big_endian(data.data());
  if (magic != expected_magic) {
    char text[96];
    std::snprintf(text, sizeof text, "wrong magic number 0x%08X (expected 0x%08X)", magic,
                  expected_magic);
    fail(path, text);
  }
  offset = 4 + 4 * static_cast<std::size_t>(rank);
  if (data.size() < offset) fail(path, "truncated: header ends early");
  std::vector<std::size_t> dims;
  std::size_t total = 1;
  for (int d = 0; d < rank; ++d) {
    const std::size_t dim = big_endian(data.data() + 4 + 4 * d);
    if (dim == 0) fail(path, "dimension " + std::to_string(d) + " is 0");
    dims.push_back(dim);
    total *= dim;
  }
  const std::size_t have = data.size() - offset;
  if (have < total) {
    fail(path, "truncated: header promises " + std::to_string(total) + " bytes of data, file has " +
                   std::to_string(have));
  }
  if (have > total) {
    fail(path, std::to_string(have - total) + " bytes of trailing data after the " +
                   std::to_string(total) + " the header describes");
  }
  return dims;
}

}  // namespace

std::filesystem::path find_idx_file(const std::filesystem::path& dir, const std::string& base) {
  std::error_code ec;
  for (const std::string& name : {base, base + ".gz"}) {
    const std::filesystem::path path = dir / name;
    if (std::filesystem::is_regular_file(path, ec)) return path;
  }
  throw Error(ErrorCode::InvalidArgument, "missing IDX file: neither '" + (dir / base).string() +
                                              "' nor '" + (dir / (base + ".gz")).string() +
                                              "' exists");
}

IdxImages read_idx_images(const std::filesystem::path& path) {
  std::vector<std::uint8_t> data = read_all(path);
  std::size_t offset = 0;
  const auto dims = parse_header(path, data, 3, offset);
  IdxImages images;
  images.count = dims[0];
  images.rows = dims[1];
  images.cols = dims[2];
  data.erase(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(offset));
  images.pixels = std::move(data);
  return images;
}

std::vector<std::uint8_t> read_idx_labels(const std::filesystem::path& path) {
  std::vector<std::uint8_t> data = read_all(path);
  std::size_t offset = 0;
  parse_header(path, data, 1, offset);
  data.erase(data.begin(), data.begin() + static_cast<std::ptrdiff_t>(offset));
  return data;
}

void write_idx(const std::filesystem::path& path, std::span<const std::uint32_t> dims,
               std::span<const std::uint8_t> data, bool gzip) {
  std::vector<std::uint8_t> bytes = {0, 0, 0x08, static_cast<std::uint8_t>(dims.size())};
  std::size_t total = 1;
  for (const std::uint32_t dim : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes.push_back((dim >> shift) & 0xFF);
    total *= dim;
  }
  require(total == data.size(), "data", "size must equal the product of the IDX dimensions");
  bytes.insert(bytes.end(), data.begin(), data.end());
  GzFile file(gzopen(path.c_str(), gzip ? "wb" : "wbT"));
  if (!file) fail(path, "cannot create");
  if (gzwrite(file.get(), bytes.data(), static_cast<unsigned>(bytes.size())) !=
      static_cast<int>(bytes.size())) {
    fail(path, "write failed");
  }
  if (gzclose(file.release()) != Z_OK) fail(path, "write failed on close");
}

}  // namespace frugal::train
