#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "../patterns/chunking.hpp"
#include "collective_context.hpp"
#include "frugal/dtype.hpp"

namespace frugal::detail {

// A run of the ring schedule (patterns/ring.hpp) over `buffer` cut into size() blocks.
struct RingPlan {
  std::span<std::byte> buffer;
  std::vector<patterns::Range> blocks;  // byte ranges, one per rank
  int first_step = 0;                   // [first_step, last_step) of the 2(P-1) ring steps
  int last_step = 0;
  DType dtype = DType::Float32;  // element type; used only by reduce steps
  // When > 1, each rank divides the block it finished reducing by this before passing it on.
  int divisor = 1;
};

// Segments travel as soon as they are ready: a segment received (and reduced) at step i is sent
// on at step i+1 while later segments of step i are still arriving.
void run_ring(CollectiveContext& ctx, const RingPlan& plan);

// Byte ranges of the balanced element split (patterns::chunk_range) of `count` elements.
std::vector<patterns::Range> balanced_blocks(std::size_t count, std::size_t element_size,
                                             int parts);

}  // namespace frugal::detail
