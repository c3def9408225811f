#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "frugal/collectives/hierarchical.hpp"
#include "frugal/communicator.hpp"

namespace frugal::testing {

// Bytes sent between ranks of different hosts (by the identities given to run_hosts), counted
// at the transport, so flat and hierarchical collectives are measured alike.
struct WireCounter {
  std::atomic<std::size_t> cross_host{0};
  std::atomic<std::size_t> within_host{0};
};

// Runs `body` once per rank on threads over one loopback group, each with its communicator and
// a Hierarchy built from `identities` (one per rank; FRUGAL_HOST_ID is per process, so the
// in-process tests give the identities directly). A rank that throws is failed in the fabric
// when `fail_fast`, and the first exception is rethrown after every thread has ended.
void run_hosts(const std::vector<std::string>& identities,
               const std::function<void(Communicator&, Hierarchy&)>& body,
               WireCounter* counter = nullptr,
               std::chrono::milliseconds timeout = std::chrono::seconds(30), bool fail_fast = true);

}  // namespace frugal::testing
