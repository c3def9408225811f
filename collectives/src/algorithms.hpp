#pragma once

#include <span>

#include "collective_context.hpp"
#include "frugal/dtype.hpp"

// The dense allreduce algorithms, one file each. Each reduces `data` in place (sum) and divides
// by `divisor` when it is > 1, leaving bit-identical results on every rank.
namespace frugal::detail {

void allreduce_ring(CollectiveContext& ctx, std::span<std::byte> data, DType dtype, int divisor);
void allreduce_recursive_doubling(CollectiveContext& ctx, std::span<std::byte> data, DType dtype,
                                  int divisor);
void allreduce_rabenseifner(CollectiveContext& ctx, std::span<std::byte> data, DType dtype,
                            int divisor);

// Folding of non-power-of-two groups shared by recursive doubling and Rabenseifner: extra ranks
// hand their data to a proxy before (fold_in) and get the result back after (fold_out).
// fold_in returns false on an extra rank, which then skips straight to fold_out.
bool fold_in(CollectiveContext& ctx, std::span<std::byte> data, DType dtype);
void fold_out(CollectiveContext& ctx, std::span<std::byte> data);

}  // namespace frugal::detail
