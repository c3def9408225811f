#include "ucx_peer_info.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "frugal/error.hpp"

namespace frugal::transport::ucx {

namespace {

// Version 2 added the network namespace and the host name.
constexpr char kMagic[8] = {'f', 'r', 'u', 'g', 'a', 'l', 'U', '2'};
constexpr std::size_t kBootIdBytes = 36;    // a UUID in text
constexpr std::size_t kHostnameBytes = 64;  // HOST_NAME_MAX on Linux
constexpr std::size_t kHeaderBytes = sizeof kMagic + 4 + 8 + 8 + kBootIdBytes + kHostnameBytes + 1;

// Copies `value`'s bytes to out[at..] and returns the next offset.
template <typename T>
std::size_t put(std::vector<std::byte>& out, std::size_t at, const T& value) {
  std::memcpy(out.data() + at, &value, sizeof value);
  return at + sizeof value;
}

template <typename T>
T get(std::span<const std::byte> in, std::size_t offset) {
  T value;
  std::memcpy(&value, in.data() + offset, sizeof value);
  return value;
}

std::uint64_t namespace_inode(const char* path) {
  struct stat st {};
  return ::stat(path, &st) == 0 ? st.st_ino : 0;
}

// Copies `text` into a fixed field of `bytes` (NUL-padded, cut at the field's size).
std::size_t put_text(std::vector<std::byte>& out, std::size_t at, const std::string& text,
                     std::size_t bytes) {
  std::memcpy(out.data() + at, text.data(), std::min(text.size(), bytes));
  return at + bytes;
}

std::string get_text(std::span<const std::byte> in, std::size_t offset, std::size_t bytes) {
  const char* field = reinterpret_cast<const char*>(in.data() + offset);
  return std::string(field, strnlen(field, bytes));
}

}  // namespace

bool same_host(const PeerInfo& a, const PeerInfo& b) noexcept {
  return !a.boot_id.empty() && a.boot_id == b.boot_id && a.net_namespace != 0 &&
         a.net_namespace == b.net_namespace && a.pid_namespace != 0 &&
         a.pid_namespace == b.pid_namespace && a.hostname == b.hostname;
}

PeerInfo local_peer_info() {
  PeerInfo info;
  info.pid = static_cast<std::int32_t>(::getpid());
  info.pid_namespace = namespace_inode("/proc/self/ns/pid");
  info.net_namespace = namespace_inode("/proc/self/ns/net");
  char host[kHostnameBytes + 1] = {};
  if (::gethostname(host, kHostnameBytes) == 0) info.hostname = host;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  // Without a boot id no peer counts as local; the probe is then simply not used.
  if (boot >> id && id.size() == kBootIdBytes) info.boot_id = id;
  return info;
}

std::vector<std::byte> encode(const PeerInfo& info) {
  std::vector<std::byte> out(kHeaderBytes);
  std::size_t at = put(out, 0, kMagic);
  at = put(out, at, info.pid);
  at = put(out, at, info.pid_namespace);
  at = put(out, at, info.net_namespace);
  at = put_text(out, at, info.boot_id, kBootIdBytes);
  at = put_text(out, at, info.hostname, kHostnameBytes);
  put(out, at, info.error_mode);
  return out;
}

PeerInfo decode(std::span<const std::byte> blob, int rank) {
  if (blob.size() != kHeaderBytes || std::memcmp(blob.data(), kMagic, sizeof kMagic) != 0) {
    throw Error(
        ErrorCode::Mismatch,
        "rank " + std::to_string(rank) +
            " did not publish a frugal UCX peer info (is every rank using the ucx transport "
            "of the same frugal version?)");
  }
  PeerInfo info;
  std::size_t at = sizeof kMagic;
  info.pid = get<std::int32_t>(blob, at);
  at += 4;
  info.pid_namespace = get<std::uint64_t>(blob, at);
  at += 8;
  info.net_namespace = get<std::uint64_t>(blob, at);
  at += 8;
  info.boot_id = get_text(blob, at, kBootIdBytes);
  at += kBootIdBytes;
  info.hostname = get_text(blob, at, kHostnameBytes);
  at += kHostnameBytes;
  info.error_mode = get<std::uint8_t>(blob, at);
  return info;
}

}  // namespace frugal::transport::ucx
