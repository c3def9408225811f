// In-process ranks over FaultTransports (sparse_fault_test, two_phase_pipeline_test,
// sparse_pipeline_test): each rank runs its body on its own thread; what the rank threw and what
// its transport saw are recorded, and judged by expect_failed_cleanly.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fault_transport.hpp"
#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"

namespace frugal::testing {

struct FaultRankRecord {
  std::optional<ErrorCode> code;  // set when the body threw a frugal::Error
  std::string message;            // its what(), or the foreign exception's, prefixed
  int live_after = 0;             // requests of the transport still alive after the body
  bool injected = false;          // the transport injected its fault
  int cancelled = 0;
};

// Runs body(r, comm, transport) on `ranks` ranks, rank r's transport injecting faults(r). A rank
// that throws is crashed in the fabric (its unreceived messages lost), so that its peers learn of
// it at once rather than at their 20 s deadline.
inline std::vector<FaultRankRecord> run_fault_ranks(
    int ranks, const std::function<Faults(int)>& faults,
    const std::function<void(int, Communicator&, FaultTransport&)>& body) {
  LoopbackGroup group = make_loopback_group(ranks);
  std::vector<FaultTransport*> transports;
  std::vector<std::unique_ptr<Communicator>> comms;
  for (auto& t : group.transports) {
    const int r = t->rank();
    auto wrapped = std::make_unique<FaultTransport>(std::move(t), faults(r));
    transports.push_back(wrapped.get());
    comms.push_back(std::make_unique<Communicator>(
        std::move(wrapped), CommunicatorOptions{.timeout = std::chrono::seconds(20)}));
  }
  std::vector<FaultRankRecord> out(static_cast<std::size_t>(ranks));
  std::vector<std::thread> threads;
  for (int r = 0; r < ranks; ++r) {
    threads.emplace_back([&, r] {
      const auto ur = static_cast<std::size_t>(r);
      FaultRankRecord& o = out[ur];
      try {
        body(r, *comms[ur], *transports[ur]);
      } catch (const Error& e) {
        o.code = e.code();
        o.message = e.what();
        loopback_fail_rank(*group.fabric, r);
      } catch (const std::exception& e) {
        o.message = std::string("not a frugal::Error: ") + e.what();
        loopback_fail_rank(*group.fabric, r);
      }
      o.live_after = transports[ur]->live();
      o.injected = transports[ur]->injected();
      o.cancelled = transports[ur]->cancelled();
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

// The verdict on a rank that threw in a run where one rank failed one of its waits: the faulty
// rank (`injected_here`: this is it and its fault fired) throws Transport with the injected
// message; a survivor learns of the failed rank, or of the agreement it left unfinished.
inline void expect_failed_cleanly(const FaultRankRecord& o, bool injected_here) {
  ASSERT_TRUE(o.code.has_value()) << o.message;
  if (injected_here) {
    EXPECT_EQ(*o.code, ErrorCode::Transport) << o.message;
    EXPECT_NE(o.message.find(kInjected), std::string::npos) << o.message;
  } else {
    EXPECT_TRUE(*o.code == ErrorCode::PeerFailure || *o.code == ErrorCode::Mismatch ||
                *o.code == ErrorCode::Transport)
        << o.message;
  }
}

}  // namespace frugal::testing
