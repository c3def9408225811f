// The agreement's verdict thrown. Apart from agreement.cpp, whose block code is fuzzed on its
// own (bench/fuzz links it without the collectives): a refusal's verdict takes an allgather.
#include "agreement.hpp"
#include "refusal.hpp"

namespace frugal::detail {

void CollectiveAgreement::check(CollectiveContext& ctx) const {
  if (refused_) throw refusals(ctx, nullptr);
  if (const std::optional<Error> error = verdict(ctx.rank())) {
    ctx.communicator().fail(*error, /*every_rank_knows=*/true);
    throw *error;
  }
}

void agree(CollectiveContext& ctx, const AgreementTerms& terms) {
  if (ctx.size() == 1) return;
  CollectiveAgreement agreement(terms);
  agree_recursive_doubling(ctx, agreement, {}, DType::Float32, 1);
  agreement.check(ctx);
}

}  // namespace frugal::detail
