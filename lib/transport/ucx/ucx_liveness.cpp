#include "ucx_liveness.hpp"

#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

namespace frugal::transport::ucx {

LivenessProbe::LivenessProbe(std::span<const PeerInfo> peers, int self)
    : pidfds_(peers.size(), -1), pids_(peers.size(), 0), states_(peers.size(), State::Unwatched) {
  const PeerInfo& me = peers[static_cast<std::size_t>(self)];
  for (std::size_t r = 0; r < peers.size(); ++r) {
    pids_[r] = peers[r].pid;
    if (static_cast<int>(r) == self || !me.same_process_space(peers[r])) continue;
    // A pidfd refers to this very process even if its pid is reused later.
    // Via syscall(): Debian 12's glibc declares pidfd_open without C linkage for C++.
    const int fd = static_cast<int>(::syscall(SYS_pidfd_open, peers[r].pid, 0));
    if (fd >= 0) {
      pidfds_[r] = fd;
      states_[r] = State::Watching;
    } else if (errno == ESRCH) {
      states_[r] = State::Exited;  // gone before we could watch it
    }
    // Other errors (old kernel, no permission): not watched.
  }
}

LivenessProbe::~LivenessProbe() {
  for (int fd : pidfds_) {
    if (fd >= 0) ::close(fd);
  }
}

bool LivenessProbe::exited(int rank) noexcept {
  const auto r = static_cast<std::size_t>(rank);
  if (states_[r] != State::Watching) return states_[r] == State::Exited;
  pollfd p{pidfds_[r], POLLIN, 0};
  // A pidfd becomes readable when the process terminates.
  if (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0) {
    states_[r] = State::Exited;
    ::close(pidfds_[r]);
    pidfds_[r] = -1;
    return true;
  }
  return false;
}

}  // namespace frugal::transport::ucx
