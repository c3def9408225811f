#pragma once

// The transport's constants, taken from frugal-bench's dense ring at P = 2, where the model has
// the fewest unknowns: a small buffer gives the per-message latency, a large one on an unshaped
// link the TCP stack's CPU per byte, a large one on a shaped link the share of the rate that
// MPI's traffic reaches. Every other row (other methods, other P) is then predicted, not fitted.

#include <cstddef>
#include <span>

#include "calibration.hpp"
#include "cost_model.hpp"
#include "measured_rows.hpp"

namespace frugal::model {

// Sets calibration.message_seconds from the smallest dense ring row at P = 2 and
// calibration.stack_seconds_per_byte from the largest (measured on links fast enough not to
// limit it). Throws frugal::Error(InvalidArgument) naming `transport` when `rows` holds no
// dense ring row at P = 2, or only one size.
void fit_transport(Calibration& calibration, std::span<const MeasuredRow> rows);

// The index in `rows` of the largest dense ring row at P = 2 (the one fit_efficiency uses).
// Throws frugal::Error(InvalidArgument) naming `efficiency` when there is none.
std::size_t efficiency_row(std::span<const MeasuredRow> rows);

// The Link::efficiency that makes the largest dense ring row at P = 2 of `rows` come out as
// measured on `link` (its own efficiency ignored), clamped to (0, 1]. Throws like
// fit_transport, naming `efficiency`.
double fit_efficiency(const Calibration& calibration, std::span<const MeasuredRow> rows,
                      const Link& link, int cores);

}  // namespace frugal::model
