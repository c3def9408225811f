#include "ucx_peer_info.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "frugal/error.hpp"

namespace frugal::transport::ucx {

namespace {

constexpr char kMagic[8] = {'f', 'r', 'u', 'g', 'a', 'l', 'U', '1'};
constexpr std::size_t kBootIdBytes = 36;  // a UUID in text
constexpr std::size_t kHeaderBytes = sizeof kMagic + 4 + 8 + kBootIdBytes + 1;

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

}  // namespace

PeerInfo local_peer_info() {
  PeerInfo info;
  info.pid = static_cast<std::int32_t>(::getpid());
  struct stat st {};
  if (::stat("/proc/self/ns/pid", &st) == 0) info.pid_namespace = st.st_ino;
  std::ifstream boot("/proc/sys/kernel/random/boot_id");
  std::string id;
  // Without a boot id no peer counts as local; the probe is then simply not used.
  if (boot >> id && id.size() == kBootIdBytes) info.boot_id = id;
  return info;
}

std::vector<std::byte> encode(const PeerInfo& info) {
  std::vector<std::byte> out(kHeaderBytes + info.address.size());
  char boot[kBootIdBytes] = {};
  std::memcpy(boot, info.boot_id.data(), std::min(info.boot_id.size(), kBootIdBytes));
  std::size_t at = put(out, 0, kMagic);
  at = put(out, at, info.pid);
  at = put(out, at, info.pid_namespace);
  at = put(out, at, boot);
  at = put(out, at, info.error_mode);
  if (!info.address.empty()) std::memcpy(out.data() + at, info.address.data(), info.address.size());
  return out;
}

PeerInfo decode(std::span<const std::byte> blob, int rank) {
  if (blob.size() <= kHeaderBytes || std::memcmp(blob.data(), kMagic, sizeof kMagic) != 0) {
    throw Error(ErrorCode::Mismatch,
                "rank " + std::to_string(rank) +
                    " did not publish a frugal UCX address (is every rank using the ucx transport "
                    "of the same frugal version?)");
  }
  PeerInfo info;
  std::size_t at = sizeof kMagic;
  info.pid = get<std::int32_t>(blob, at);
  at += 4;
  info.pid_namespace = get<std::uint64_t>(blob, at);
  at += 8;
  const char* boot = reinterpret_cast<const char*>(blob.data() + at);
  info.boot_id.assign(boot, strnlen(boot, kBootIdBytes));
  at += kBootIdBytes;
  info.error_mode = get<std::uint8_t>(blob, at);
  at += 1;
  info.address.assign(blob.begin() + static_cast<std::ptrdiff_t>(at), blob.end());
  return info;
}

}  // namespace frugal::transport::ucx
