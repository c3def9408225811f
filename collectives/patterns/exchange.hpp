#pragma once

#include "ring.hpp"

namespace frugal::patterns {

// Direct exchange with every other rank (alltoall, sending to all): in round s = 1..P-1 a rank
// sends to rank+s and receives from rank-s, so in every round each rank is the target of
// exactly one sender instead of all of them starting on rank 0.
constexpr int exchange_send_peer(int rank, int size, int round) noexcept {
  return mod(rank + round, size);
}
constexpr int exchange_recv_peer(int rank, int size, int round) noexcept {
  return mod(rank - round, size);
}

}  // namespace frugal::patterns
