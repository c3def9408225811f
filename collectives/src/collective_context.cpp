#include "collective_context.hpp"

#include <thread>
#include <vector>

namespace frugal::detail {

void CollectiveContext::wait_all(std::span<Request> requests) {
  std::vector<Request*> pointers;
  pointers.reserve(requests.size());
  for (Request& r : requests) pointers.push_back(&r);
  wait_all(std::span<Request* const>(pointers));
}

void CollectiveContext::wait_recv(Request& request, std::size_t expected_bytes) {
  wait(request);
  check_recv(request, expected_bytes);
}

void CollectiveContext::check_recv(const Request& request, std::size_t expected_bytes) const {
  const PendingOp* op = request.op();
  const int peer = op != nullptr ? op->peer : -1;
  if (request.bytes() != expected_bytes) {
    throw Error(ErrorCode::Mismatch, "rank " + std::to_string(rank()) + ": expected " +
                                         std::to_string(expected_bytes) + " bytes from peer " +
                                         std::to_string(peer) + " (tag " + std::to_string(tag_) +
                                         ") but received " + std::to_string(request.bytes()) +
                                         "; do all ranks pass the same count and options?");
  }
}

void CollectiveContext::progress(std::span<Request> requests) {
  for (Request& r : requests) {
    if (!r.done()) transport_.test(r);
  }
}

std::size_t CollectiveContext::wait_any(std::span<Request* const> pending) {
  // As Transport::wait_all: spin first (shared memory completes within microseconds), then
  // yield so that oversubscribed ranks let their peers run; the spin counts tests, not rounds,
  // so that polling many requests does not hold the core longer than waiting on one.
  constexpr std::size_t kTestsBeforeYield = 2000;
  const Clock::time_point give_up_polling = Clock::now() + kPollSlice;
  for (std::size_t tests = 0;; tests += pending.size()) {
    for (std::size_t i = 0; i < pending.size(); ++i) {
      // test() even when done(): a failed operation may be complete and throw only there.
      if (transport_.test(*pending[i])) return i;
    }
    if (tests < kTestsBeforeYield) continue;
    if (Clock::now() >= give_up_polling) break;
    std::this_thread::yield();
  }
  wait(*pending.front());
  return 0;
}

void CollectiveContext::sendrecv(int to, std::span<const std::byte> out, int from,
                                 std::span<std::byte> in) {
  Request recv = irecv(from, in);
  Request send = isend(to, out);
  wait_recv(recv, in.size());
  wait(send);
}

}  // namespace frugal::detail
