#pragma once

// What each rank publishes through the bootstrap before UCX is set up (its worker address follows
// in a second round): what a peer needs to watch it (its pid and which host and pid namespace that
// pid belongs to), where it runs (network namespace and host name, which decide each endpoint's
// error mode in auto mode) and the error-mode setting it uses (all ranks must agree).

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace frugal::transport::ucx {

struct PeerInfo {
  std::int32_t pid = 0;
  std::uint64_t pid_namespace = 0;  // inode of /proc/self/ns/pid
  std::uint64_t net_namespace = 0;  // inode of /proc/self/ns/net
  std::string boot_id;              // /proc/sys/kernel/random/boot_id: which host (and boot)
  std::string hostname;             // gethostname(): differs per UTS namespace
  std::uint8_t error_mode = 0;      // the UcxErrorMode setting, not the per-peer outcome

  // The same machine and pid namespace: `pid` names the same process for both of us.
  bool same_process_space(const PeerInfo& other) const noexcept {
    return !boot_id.empty() && boot_id == other.boot_id && pid_namespace == other.pid_namespace;
  }
};

// Whether `a` and `b` count as one host for the error mode of the endpoints between them (auto
// mode): callback mode (shared memory, CMA, pidfd probe) when true, UCX's peer mode when false.
// It is an equality of (boot id, network namespace, pid namespace, host name), so both ranks of a
// pair compute the same answer from the same two blobs, which UCX 1.13 requires (an endpoint whose
// wire-up request carries another error mode fails: "asymmetric endpoint configuration is not
// supported"). Every field is needed:
//  - boot id: the kernel. Namespace inodes repeat across machines (every host's initial network
//    namespace has the same inode), so they only mean something under one boot id.
//  - network namespace: ranks in other namespaces are, for frugal, other hosts (containers, or
//    bench/cluster/run's simulated nodes): their traffic belongs on the network, and a dead one
//    must be found through it.
//  - pid namespace: callback mode relies on the pidfd probe to see a dead local peer; without a
//    shared pid namespace there is no probe, so keepalive (peer mode) must do it.
//  - host name: a UTS namespace of its own is how container runtimes and bench/cluster/run mark a
//    separate node.
// Erring towards "not the same host" only costs speed (TCP instead of shared memory), never
// failure detection, so an unknown boot id or namespace (0) counts as different.
bool same_host(const PeerInfo& a, const PeerInfo& b) noexcept;

// This process's info (everything but error_mode).
PeerInfo local_peer_info();

std::vector<std::byte> encode(const PeerInfo& info);
// Throws Error(Mismatch) naming `rank` if the blob is not a peer info of this version.
PeerInfo decode(std::span<const std::byte> blob, int rank);

}  // namespace frugal::transport::ucx
