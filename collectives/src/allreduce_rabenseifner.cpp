#include "../patterns/chunking.hpp"
#include "../patterns/recursive_doubling.hpp"
#include "algorithms.hpp"
#include "reduce_kernels.hpp"

namespace frugal::detail {

void allreduce_rabenseifner(CollectiveContext& ctx, std::span<std::byte> data, DType dtype,
                            int divisor) {
  using namespace patterns;
  if (fold_in(ctx, data, dtype)) {
    const Fold fold = fold_for(ctx.rank(), ctx.size());
    const std::size_t element = size_of(dtype);
    const std::size_t count = data.size() / element;
    auto bytes_of = [&](int first_block, int blocks) {
      const Range r = chunk_span(count, fold.pof2, first_block, first_block + blocks);
      return data.subspan(r.offset * element, r.count * element);
    };
    // The first (largest) half is the most any step receives.
    const std::size_t largest_half =
        fold.pof2 > 1 ? chunk_span(count, fold.pof2, 0, fold.pof2 / 2).count : 0;
    const auto incoming = scratch(largest_half * element);

    // Reduce-scatter by recursive halving: each step halves the blocks a rank is responsible for.
    for (int mask = fold.pof2 / 2; mask >= 1; mask /= 2) {
      const BlockHalves h = halving_step(fold.virtual_rank, mask);
      const int partner = real_rank(rd_partner(fold.virtual_rank, mask), fold.rem);
      const std::span<std::byte> keep = bytes_of(h.keep_first, h.blocks);
      const std::span<std::byte> in(incoming.get(), keep.size());
      ctx.sendrecv(partner, bytes_of(h.send_first, h.blocks), partner, in);
      reduce_sum(keep, in, dtype);
    }
    if (divisor > 1) divide(bytes_of(fold.virtual_rank, 1), dtype, divisor);
    // Allgather by recursive doubling: retrace the halving steps, exchanging finished halves.
    for (int mask = 1; mask < fold.pof2; mask *= 2) {
      const BlockHalves h = halving_step(fold.virtual_rank, mask);
      const int partner = real_rank(rd_partner(fold.virtual_rank, mask), fold.rem);
      ctx.sendrecv(partner, bytes_of(h.keep_first, h.blocks), partner,
                   bytes_of(h.send_first, h.blocks));
    }
  }
  fold_out(ctx, data);
}

}  // namespace frugal::detail
