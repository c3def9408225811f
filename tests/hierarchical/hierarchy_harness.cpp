#include "hierarchy_harness.hpp"

#include <exception>
#include <mutex>
#include <thread>

#include "forwarding_transport.hpp"
#include "frugal/loopback.hpp"

namespace frugal::testing {

namespace {

// Counts what a loopback transport sends by destination host.
class CountingTransport final : public ForwardingTransport {
 public:
  CountingTransport(std::unique_ptr<Transport> inner, std::vector<std::string> identities,
                    WireCounter* counter)
      : ForwardingTransport(std::move(inner)),
        identities_(std::move(identities)),
        counter_(counter) {}

  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    if (counter_ != nullptr && peer >= 0 && peer < size()) {
      const bool cross = identities_[static_cast<std::size_t>(peer)] !=
                         identities_[static_cast<std::size_t>(rank())];
      (cross ? counter_->cross_host : counter_->within_host) += data.size();
    }
    return ForwardingTransport::isend(peer, tag, data);
  }

 private:
  std::vector<std::string> identities_;
  WireCounter* counter_;
};

}  // namespace

void run_hosts(const std::vector<std::string>& identities,
               const std::function<void(Communicator&, Hierarchy&)>& body, WireCounter* counter,
               std::chrono::milliseconds timeout, bool fail_fast) {
  const int size = static_cast<int>(identities.size());
  LoopbackGroup group = make_loopback_group(size);
  std::vector<std::unique_ptr<Communicator>> comms;
  for (auto& transport : group.transports) {
    comms.push_back(std::make_unique<Communicator>(
        std::make_unique<CountingTransport>(std::move(transport), identities, counter),
        CommunicatorOptions{.timeout = timeout}));
  }
  std::mutex mutex;
  std::exception_ptr first_error;
  std::vector<std::thread> threads;
  for (auto& comm : comms) {
    threads.emplace_back([&, c = comm.get()] {
      try {
        Hierarchy hierarchy(*c, topology_from_identities(identities, c->rank()));
        body(*c, hierarchy);
      } catch (...) {
        {
          std::lock_guard lock(mutex);
          if (!first_error) first_error = std::current_exception();
        }
        if (fail_fast) loopback_fail_rank(*group.fabric, c->rank());
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace frugal::testing
