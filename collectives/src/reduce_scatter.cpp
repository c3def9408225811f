#include <string>

#include "../patterns/ring.hpp"
#include "agreement.hpp"
#include "frugal/collectives/collectives.hpp"
#include "lazy_require.hpp"
#include "reduce_kernels.hpp"
#include "ring_pipeline.hpp"

namespace frugal {

std::span<std::byte> reduce_scatter(Communicator& comm, std::span<std::byte> data, DType dtype,
                                    ReduceOp op, const CollectiveOptions& options) {
  require(data.size() % size_of(dtype) == 0, "data", [&] {
    return "byte size " + std::to_string(data.size()) + " is not a whole number of " +
           std::string(to_string(dtype)) + " elements";
  });
  require(op != ReduceOp::Average || dtype != DType::Int32, "op",
          "average is defined for floating types only");
  detail::RingPlan plan;
  plan.buffer = data;
  plan.blocks = detail::balanced_blocks(data.size() / size_of(dtype), size_of(dtype), comm.size());
  plan.first_step = 0;
  plan.last_step = patterns::ring_reduce_steps(comm.size());
  plan.dtype = dtype;
  plan.divisor = op == ReduceOp::Average ? comm.size() : 1;
  const patterns::Range mine = plan.blocks[static_cast<std::size_t>(comm.rank())];
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::ReduceScatter;
  terms.count = data.size() / size_of(dtype);
  terms.dtype = dtype;
  terms.op = op;
  detail::run_collective(comm, options, [&](detail::CollectiveContext& ctx) {
    detail::agree(ctx, terms);
    detail::run_ring(ctx, plan);
    // With one rank there is no reduce step to apply the divisor (a no-op then anyway).
  });
  return data.subspan(mine.offset, mine.count);
}

}  // namespace frugal
