#include "../patterns/recursive_doubling.hpp"
#include "algorithms.hpp"
#include "reduce_kernels.hpp"

namespace frugal::detail {

bool fold_in(CollectiveContext& ctx, std::span<std::byte> data, DType dtype) {
  const patterns::Fold fold = patterns::fold_for(ctx.rank(), ctx.size());
  switch (fold.role) {
    case patterns::FoldRole::Core:
      return true;
    case patterns::FoldRole::Extra: {
      Request send = ctx.isend(fold.partner, data);
      ctx.wait(send);
      return false;
    }
    case patterns::FoldRole::Proxy: {
      const auto incoming = scratch(data.size());
      const std::span<std::byte> in(incoming.get(), data.size());
      Request recv = ctx.irecv(fold.partner, in);
      ctx.wait_recv(recv, data.size());
      reduce_sum(data, in, dtype);
      return true;
    }
  }
  return true;
}

void fold_out(CollectiveContext& ctx, std::span<std::byte> data) {
  const patterns::Fold fold = patterns::fold_for(ctx.rank(), ctx.size());
  if (fold.role == patterns::FoldRole::Proxy) {
    Request send = ctx.isend(fold.partner, data);
    ctx.wait(send);
  } else if (fold.role == patterns::FoldRole::Extra) {
    Request recv = ctx.irecv(fold.partner, data);
    ctx.wait_recv(recv, data.size());
  }
}

}  // namespace frugal::detail
