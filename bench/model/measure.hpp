#pragma once

// Times frugal's kernels on this machine for the calibration file: one thread, a buffer of
// `elements` floats, the fastest of `repeats` runs (the uncontended speed; contention is the
// model's stretch factor, not the calibration's).

#include <cstddef>

#include "calibration.hpp"

namespace frugal::model {

// Fills every kernel field of a Calibration, at small_elements and at large_elements (not the
// transport fields: see transport_fit.hpp). Throws frugal::Error(InvalidArgument) naming
// `elements` (below 4096, or small above large) or `repeats` (< 1).
Calibration measure_kernels(std::size_t small_elements, std::size_t large_elements, int repeats);

}  // namespace frugal::model
