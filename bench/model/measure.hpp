#pragma once

// Times frugal's kernels on this machine for the calibration file: one thread, a buffer of
// `elements` floats, the fastest of `repeats` runs (the uncontended speed; contention is the
// model's stretch factor, not the calibration's).

#include <cstddef>

#include "calibration.hpp"

namespace frugal::model {

// Fills every kernel field of a Calibration, at small_elements and at large_elements, and
// post_seconds (not the fitted transport fields: see transport_fit.hpp). Throws
// frugal::Error(InvalidArgument) naming `elements` (below 4096, or small above large) or `repeats`
// (< 1).
Calibration measure_kernels(std::size_t small_elements, std::size_t large_elements, int repeats);

// Seconds per small message (64 bytes) sent and received over a loopback TCP connection in one
// thread: the system calls a round pays per extra peer. Throws frugal::Error(Transport) if the
// loopback connection cannot be made.
double measure_post_seconds(int messages);

}  // namespace frugal::model
