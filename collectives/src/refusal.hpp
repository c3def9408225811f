// A rank whose arguments fail its own checks cannot just throw: its peers, whose arguments
// passed, are already in the collective's agreement and would wait for it until the timeout.
// It takes part in that agreement instead, with its block marked refused (one flag bit in the
// block every call sends anyway), so that every rank stops after the agreement alike. Then, on
// this error path only, one allgather of a fixed-size slot per rank tells every rank which
// ranks refused and why. A call whose arguments pass on every rank costs nothing more.
#pragma once

#include "agreement.hpp"
#include "collective_context.hpp"
#include "frugal/collectives/options.hpp"
#include "frugal/communicator.hpp"
#include "frugal/error.hpp"

namespace frugal::detail {

// The refusing side: takes part in the agreement on `terms` (what its peers expect: the
// collective the caller was about to run) with a refused block, and in the allgather of the
// reasons; then throws `error` unchanged. With one rank it just throws. The communicator stays
// usable: every rank has finished the same exchanges.
[[noreturn]] void refuse(Communicator& comm, const CollectiveOptions& options,
                         const AgreementTerms& terms, const Error& error);

// Runs `checks`; what they throw is refused collectively.
template <typename Checks>
void refusing(Communicator& comm, const CollectiveOptions& options, const AgreementTerms& terms,
              Checks&& checks) {
  try {
    checks();
  } catch (const Error& e) {
    refuse(comm, options, terms, e);
  }
}

// After an agreement in which some rank refused: the allgather of the reasons, `own` this
// rank's error (null when its arguments passed). Returns what a rank whose arguments passed
// throws: Mismatch naming every refusing rank and its error.
AgreedError refusals(CollectiveContext& ctx, const Error* own);

}  // namespace frugal::detail
