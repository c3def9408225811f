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

// One small dense allreduce (38 float64 sums through frugal's allreduce, so its own agreement
// on count and order applies too) carrying a 64-bit digest of all the terms and one byte of a
// hash of each term, every byte x as (x, x^2): the ranks agree on a byte exactly when ranks *
// sum(x^2) == sum(x)^2 (Cauchy-Schwarz), and these sums are exact in a double below 370 000
// ranks. The digest decides; the per-term bytes name the term that differs. With them travel
// two counts: ranks whose input holds NaN/Inf and ranks whose state is bound to another layout.
// Any disagreement is Mismatch on every rank (the communicator is failed, as after the
// library's own agreement), the rank whose state changed layout saying what changed
// (`state_change`, "" when its state is fine). `bytes_sent` grows by the payload bytes this rank
// sent.
PowerSgdVerdict powersgd_agree(Communicator& comm, const PowerSgdTerms& terms, bool non_finite,
                               const std::string& state_change, const CollectiveOptions& options,
                               std::size_t& bytes_sent);

}  // namespace frugal::detail
