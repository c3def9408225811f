#pragma once

#include <memory>
#include <vector>

#include "frugal/transport.hpp"

namespace frugal {

class LoopbackFabric;

// Ranks as threads of one process, for fast and deterministic tests of the algorithms. Sends are
// rendezvous: a send completes when a receive has copied it, so buffer-lifetime bugs show up.
//
// make_loopback_group returns `size` transports that share one fabric; hand one to each thread.
// The fabric is thread-safe; each transport is used by one thread.
struct LoopbackGroup {
  std::shared_ptr<LoopbackFabric> fabric;
  std::vector<std::unique_ptr<Transport>> transports;
};
LoopbackGroup make_loopback_group(int size);

// Simulates the death of `rank`: its peers' pending and future operations involving it fail with
// PeerFailure. (Destroying a rank's transport does the same.)
void loopback_fail_rank(LoopbackFabric& fabric, int rank);

}  // namespace frugal
