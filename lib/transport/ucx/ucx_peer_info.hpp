#pragma once

// What each rank publishes through the bootstrap: its UCX worker address plus what a peer needs
// to watch it (its pid and which host and pid namespace that pid belongs to) and the error mode
// it uses (all ranks must agree).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace frugal::transport::ucx {

struct PeerInfo {
  std::int32_t pid = 0;
  std::uint64_t pid_namespace = 0;  // inode of /proc/self/ns/pid
  std::string boot_id;              // /proc/sys/kernel/random/boot_id: which host (and boot)
  std::uint8_t error_mode = 0;
  std::vector<std::byte> address;  // ucp_worker_get_address

  // The same machine and pid namespace: `pid` names the same process for both of us.
  bool same_process_space(const PeerInfo& other) const noexcept {
    return !boot_id.empty() && boot_id == other.boot_id && pid_namespace == other.pid_namespace;
  }
};

// This process's info (everything but address and error_mode).
PeerInfo local_peer_info();

std::vector<std::byte> encode(const PeerInfo& info);
// Throws Error(Mismatch) naming `rank` if the blob is not a peer info of this version.
PeerInfo decode(std::span<const std::byte> blob, int rank);

}  // namespace frugal::transport::ucx
