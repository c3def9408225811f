#include "agreement.hpp"
#include "collective_context.hpp"
#include "frugal/collectives/collectives.hpp"

namespace frugal {

void barrier(Communicator& comm, const CollectiveOptions& options) {
  // The agreement's recursive doubling returns on no rank before every rank has entered, so it
  // is the barrier itself: a rank that calls another collective meanwhile gets Mismatch, on
  // every rank, instead of a barrier that completes against the other collective's messages.
  detail::run_collective(comm, options, [](detail::CollectiveContext& ctx) {
    detail::AgreementTerms terms;
    terms.kind = detail::CollectiveKind::Barrier;
    detail::agree(ctx, terms);
  });
}

}  // namespace frugal
