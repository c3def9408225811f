#include "../patterns/recursive_doubling.hpp"
#include "algorithms.hpp"
#include "reduce_kernels.hpp"

namespace frugal::detail {

void allreduce_recursive_doubling(CollectiveContext& ctx, std::span<std::byte> data, DType dtype,
                                  int divisor) {
  if (fold_in(ctx, data, dtype)) {
    const patterns::Fold fold = patterns::fold_for(ctx.rank(), ctx.size());
    const auto incoming = scratch(data.size());
    const std::span<std::byte> in(incoming.get(), data.size());
    for (int mask = 1; mask < fold.pof2; mask *= 2) {
      const int partner =
          patterns::real_rank(patterns::rd_partner(fold.virtual_rank, mask), fold.rem);
      ctx.sendrecv(partner, data, partner, in);
      // a + b == b + a in IEEE arithmetic, so both partners hold identical sums.
      reduce_sum(data, in, dtype);
    }
    if (divisor > 1) divide(data, dtype, divisor);
  }
  fold_out(ctx, data);
}

}  // namespace frugal::detail
