#pragma once

namespace frugal::patterns {

// Largest power of two not above n (n >= 1).
constexpr int floor_pow2(int n) noexcept {
  int p = 1;
  while (p * 2 <= n) p *= 2;
  return p;
}

constexpr bool is_pow2(int n) noexcept {
  return n > 0 && (n & (n - 1)) == 0;
}

// Power-of-two algorithms on any P fold the extra ranks first (MPICH's scheme): with
// pof2 = floor_pow2(P) and rem = P - pof2, each even rank r < 2*rem hands its data to r+1 and
// sits out; r+1 stands in for both. The remaining pof2 ranks get virtual ranks 0..pof2-1.
enum class FoldRole {
  Core,   // takes part directly
  Proxy,  // receives an extra rank's data first, then takes part
  Extra,  // sends its data to its proxy, then waits for the result
};

struct Fold {
  int pof2 = 1;
  int rem = 0;
  FoldRole role = FoldRole::Core;
  int partner = -1;       // the proxy's extra rank or the extra rank's proxy
  int virtual_rank = -1;  // -1 for an Extra rank
};

constexpr Fold fold_for(int rank, int size) noexcept {
  Fold f;
  f.pof2 = floor_pow2(size);
  f.rem = size - f.pof2;
  if (rank < 2 * f.rem) {
    if (rank % 2 == 0) {
      f.role = FoldRole::Extra;
      f.partner = rank + 1;
    } else {
      f.role = FoldRole::Proxy;
      f.partner = rank - 1;
      f.virtual_rank = rank / 2;
    }
  } else {
    f.virtual_rank = rank - f.rem;
  }
  return f;
}

// Real rank of a virtual rank in the folded group.
constexpr int real_rank(int virtual_rank, int rem) noexcept {
  return virtual_rank < rem ? virtual_rank * 2 + 1 : virtual_rank + rem;
}

// Partner of virtual rank v at the step that exchanges across `mask` (1, 2, 4, ...).
constexpr int rd_partner(int virtual_rank, int mask) noexcept {
  return virtual_rank ^ mask;
}

// Recursive halving over pof2 blocks: before the step with distance `mask` (pof2/2 down to 1)
// virtual rank v owns blocks [lo, lo + 2*mask); it keeps the half on its side of the bit and
// sends the other half. After the last step it owns block v alone. The allgather retraces the
// steps in reverse order.
struct BlockHalves {
  int keep_first;
  int send_first;
  int blocks;  // in each half
};
constexpr BlockHalves halving_step(int virtual_rank, int mask) noexcept {
  const int lo = virtual_rank & ~(2 * mask - 1);
  const bool upper = (virtual_rank & mask) != 0;
  return BlockHalves{upper ? lo + mask : lo, upper ? lo : lo + mask, mask};
}

// Dissemination barrier: at round k a rank signals (rank + 2^k) and waits for (rank - 2^k).
constexpr int dissemination_rounds(int size) noexcept {
  int rounds = 0;
  for (int d = 1; d < size; d *= 2) ++rounds;
  return rounds;
}

// Binomial tree rooted at `root`: ranks are renumbered relative to the root; a rank receives
// from the relative rank that clears its lowest set bit and sends to relative + 2^k for the
// bits below it.
constexpr int binomial_parent(int relative) noexcept {
  return relative & (relative - 1);
}
constexpr int lowest_bit(int relative) noexcept {
  return relative & -relative;
}

}  // namespace frugal::patterns
