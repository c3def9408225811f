#pragma once

// Watches the processes of peers on this host through pidfds, so that a rank waiting on a dead
// local peer learns it within a millisecond instead of at its deadline, whatever UCX's error mode.
// Peers on other hosts (or in another pid namespace) are not watched: for them UCX's own error
// reporting and the deadline remain.

#include <span>
#include <vector>

#include "ucx_peer_info.hpp"

namespace frugal::transport::ucx {

class LivenessProbe {
 public:
  LivenessProbe(std::span<const PeerInfo> peers, int self);
  ~LivenessProbe();
  LivenessProbe(const LivenessProbe&) = delete;
  LivenessProbe& operator=(const LivenessProbe&) = delete;

  bool watches(int rank) const noexcept { return state(rank) != State::Unwatched; }
  // True once `rank`'s process is known to have exited (non-blocking poll of its pidfd).
  bool exited(int rank) noexcept;
  int pid(int rank) const noexcept { return pids_[static_cast<std::size_t>(rank)]; }

 private:
  enum class State { Unwatched, Watching, Exited };
  State state(int rank) const noexcept { return states_[static_cast<std::size_t>(rank)]; }

  std::vector<int> pidfds_;
  std::vector<int> pids_;
  std::vector<State> states_;
};

}  // namespace frugal::transport::ucx
