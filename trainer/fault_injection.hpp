#pragma once

// Deterministic crash points for the crash-consistency test
// (tests/trainer/checkpoint_kill_test.sh). A kill at a chosen instant of a checkpoint write cannot
// be hit reliably from outside (the write takes milliseconds), so the trainer kills itself there
// when asked:
//
//   FRUGAL_FAULT_INJECT=checkpoint-write:<bytes>  SIGKILL after <bytes> bytes of this rank's
//                                                 checkpoint file went into its temporary file
//                                                 (before fsync and rename)
//   FRUGAL_FAULT_INJECT=checkpoint-commit         SIGKILL after every rank's file is renamed into
//                                                 place, before rank 0 rewrites DIR/latest
//   FRUGAL_FAULT_INJECT=latest-write:<bytes>      SIGKILL after <bytes> bytes of DIR/latest went
//                                                 into its temporary file (rank 0, the commit)
//
// Each fires the first time its point is reached in the process. Unset (the normal case), the
// hooks cost one comparison. A malformed value is a usage error (check_fault_injection).

#include <cstddef>
#include <optional>
#include <string_view>

namespace frugal::train {

// Throws frugal::Error(InvalidArgument) if FRUGAL_FAULT_INJECT is set but malformed: called at
// startup, so that a typo fails before training rather than at the first checkpoint.
void check_fault_injection();

// The byte count of FRUGAL_FAULT_INJECT if it names `point` with a count ("checkpoint-write",
// "latest-write"), else nullopt. Throws frugal::Error(InvalidArgument) if the variable is
// malformed.
std::optional<std::size_t> fault_injection_bytes(std::string_view point);

// Raises SIGKILL on this process if FRUGAL_FAULT_INJECT names `point` (a point without a count).
void inject_fault_at(std::string_view point);

// Raises SIGKILL on this process now (after a fault_injection_bytes() point was reached).
[[noreturn]] void inject_fault_now();

}  // namespace frugal::train
