#include "loopback_harness.hpp"

#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "frugal/loopback.hpp"

namespace frugal::testing {

void run_ranks(int size, const std::function<void(Communicator&)>& body,
               std::chrono::milliseconds timeout, bool fail_fast) {
  LoopbackGroup group = make_loopback_group(size);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (auto& transport : group.transports) {
    comms.push_back(std::make_unique<Communicator>(std::move(transport),
                                                   CommunicatorOptions{.timeout = timeout}));
  }
  std::mutex mutex;
  std::exception_ptr first_error;
  std::vector<std::thread> threads;
  for (auto& comm : comms) {
    threads.emplace_back([&] {
      try {
        body(*comm);
      } catch (...) {
        {
          std::lock_guard lock(mutex);
          if (!first_error) first_error = std::current_exception();
        }
        // Peers waiting on this rank get PeerFailure now instead of after their timeout. Closing
        // its transport (rather than crashing it) keeps what it sent eagerly before it gave up,
        // such as a notice telling its peers why, deliverable, as a process exiting would.
        if (fail_fast) comm.reset();
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace frugal::testing
