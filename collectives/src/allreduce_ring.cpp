#include "../patterns/ring.hpp"
#include "algorithms.hpp"
#include "ring_pipeline.hpp"

namespace frugal::detail {

void allreduce_ring(CollectiveContext& ctx, std::span<std::byte> data, DType dtype, int divisor) {
  RingPlan plan;
  plan.buffer = data;
  plan.blocks = balanced_blocks(data.size() / size_of(dtype), size_of(dtype), ctx.size());
  plan.first_step = 0;
  plan.last_step = patterns::ring_total_steps(ctx.size());
  plan.dtype = dtype;
  plan.divisor = divisor;
  run_ring(ctx, plan);
}

}  // namespace frugal::detail
