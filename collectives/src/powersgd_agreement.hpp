#pragma once

#include <cstdint>
#include <string>

#include "frugal/collectives/powersgd.hpp"
#include "frugal/communicator.hpp"

namespace frugal::detail {

// What every rank of a powersgd_allreduce must agree on before anything changes.
struct PowerSgdTerms {
  std::uint64_t tensors = 0;
  std::uint64_t shapes_digest = 0;
  std::uint64_t rank = 0;
  std::uint64_t op = 0;
  std::uint64_t error_feedback = 0;
  std::uint64_t min_compression_rate_bits = 0;
  std::uint64_t start_iter = 0;
  std::uint64_t seed = 0;
  std::uint64_t non_finite_action = 0;
  std::uint64_t step = 0;
};

// What the agreement found out about the other ranks.
struct PowerSgdVerdict {
  bool non_finite = false;  // some rank's input holds NaN or Inf
};

// One vote_on_terms (term_agreement.hpp) on these terms, with two flags: this rank's input holds
// NaN/Inf, and this rank's state is bound to another layout. Any disagreement is Mismatch on
// every rank (the communicator is failed, as after the library's own agreement), the rank whose
// state changed layout saying what changed (`state_change`, "" when its state is fine).
// `bytes_sent` grows by the payload bytes this rank sent.
PowerSgdVerdict powersgd_agree(Communicator& comm, const PowerSgdTerms& terms, bool non_finite,
                               const std::string& state_change, const CollectiveOptions& options,
                               std::size_t& bytes_sent);

}  // namespace frugal::detail
