#include "frugal/transport.hpp"

#include <cstdio>
#include <string>
#include <thread>

#include "frugal/error.hpp"

namespace frugal {

std::string PendingOp::describe() const {
  char tag_text[16];
  std::snprintf(tag_text, sizeof tag_text, "0x%x", tag);
  return std::string(kind == OpKind::Send ? "send to" : "recv from") + " peer " +
         std::to_string(peer) + " tag " + tag_text + " (" + std::to_string(posted_bytes) +
         " bytes)";
}

Request& Request::operator=(Request&& other) noexcept {
  if (this != &other) {
    reset();
    op_ = std::move(other.op_);
  }
  return *this;
}

Request::~Request() {
  reset();
}

void Request::reset() noexcept {
  if (op_ && !op_->complete) {
    op_->owner->cancel(*op_);
  }
  op_.reset();
}

void Transport::wait(Request& request, Deadline deadline) {
  Request* one = &request;
  wait_all(std::span<Request* const>(&one, 1), deadline);
}

void Transport::wait_all(std::span<Request* const> requests, Deadline deadline) {
  // Spin first (completions on shared memory arrive within microseconds), then yield so that
  // oversubscribed ranks on few cores let their peers run.
  constexpr int kSpinsBeforeYield = 2000;
  int idle = 0;
  std::size_t first_open = 0;
  const Clock::time_point start = Clock::now();
  for (;;) {
    bool progressed = false;
    bool all_done = true;
    for (std::size_t i = first_open; i < requests.size(); ++i) {
      Request& r = *requests[i];
      if (r.done()) {
        if (i == first_open) ++first_open;
        continue;
      }
      if (test(r)) {
        progressed = true;
        if (i == first_open) ++first_open;
      } else {
        all_done = false;
      }
    }
    if (all_done) return;
    if (progressed) {
      idle = 0;
      continue;
    }
    if (++idle < kSpinsBeforeYield) continue;
    check_peer_failures(*requests[first_open]->op());
    if (Clock::now() >= deadline) {
      for (Request* r : requests) {
        if (!r->done()) {
          const auto waited =
              std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
          throw Error(ErrorCode::Timeout,
                      context(*r->op()) + " (waited " + std::to_string(waited.count()) + " ms)");
        }
      }
      return;
    }
    std::this_thread::yield();
  }
}

std::string Transport::context(const PendingOp& op) const {
  return "rank " + std::to_string(rank()) + " of " + std::to_string(size()) + " (" +
         std::string(name()) + "): " + op.describe() + " did not complete before its deadline";
}

void Transport::check_peer(int peer, std::string_view what) const {
  if (peer < 0 || peer >= size()) {
    throw Error(ErrorCode::InvalidArgument, std::string(what) + ": peer " + std::to_string(peer) +
                                                " is outside 0.." + std::to_string(size() - 1) +
                                                " (rank " + std::to_string(rank()) + ")");
  }
}

}  // namespace frugal
