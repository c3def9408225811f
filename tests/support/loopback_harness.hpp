#pragma once

#include <chrono>
#include <functional>

#include "frugal/communicator.hpp"

namespace frugal::testing {

// Runs `body` once per rank, each on its own thread with its own Communicator over one loopback
// group, and joins them. A rank that throws has its transport closed, so its peers get
// PeerFailure instead of waiting; the first exception thrown by any rank is rethrown here after
// all threads have ended.
// With fail_fast off a throwing rank just ends (like a rank that returned an error), which lets
// tests check what each survivor reports.
void run_ranks(int size, const std::function<void(Communicator&)>& body,
               std::chrono::milliseconds timeout = std::chrono::seconds(30), bool fail_fast = true);

}  // namespace frugal::testing
