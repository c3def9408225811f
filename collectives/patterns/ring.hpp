#pragma once

namespace frugal::patterns {

constexpr int mod(int a, int p) noexcept {
  return ((a % p) + p) % p;
}

constexpr int ring_right(int rank, int size) noexcept {
  return mod(rank + 1, size);
}
constexpr int ring_left(int rank, int size) noexcept {
  return mod(rank - 1, size);
}

// The ring allreduce as one sequence of 2(P-1) steps over P blocks. At step i a rank sends block
// ring_send_block to its right neighbour and receives ring_recv_block from its left one. Steps
// [0, P-1) are the reduce-scatter (received blocks are added in), after which rank r holds the
// full reduction of block r; steps [P-1, 2P-2) are the allgather (received blocks are copied).
// The block received at step i is the block sent at step i+1, which is what lets segments flow
// through the ring without waiting for whole steps.
constexpr int ring_send_block(int rank, int size, int step) noexcept {
  return mod(rank - step - 1, size);
}
constexpr int ring_recv_block(int rank, int size, int step) noexcept {
  return mod(rank - step - 2, size);
}

constexpr int ring_reduce_steps(int size) noexcept {
  return size - 1;
}
constexpr int ring_total_steps(int size) noexcept {
  return 2 * (size - 1);
}

// The block received at step i was last sent at step i - (P-1): that send must have completed
// before the receive may overwrite the block.
constexpr int ring_overwrites_send_of_step(int size, int step) noexcept {
  return step - (size - 1);
}

}  // namespace frugal::patterns
