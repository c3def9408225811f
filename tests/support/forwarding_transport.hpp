// The base of the tests' wrappers that slow, count or corrupt traffic, and one that corrupts a
// received message.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <utility>

#include "frugal/transport.hpp"

namespace frugal::testing {

// Hands every call to the transport it wraps. Requests stay the inner transport's own (their ops
// name it as owner), so waits and cancels reach it directly, and the inner wait_all checks its
// own peers' failure notices; a wrapper overrides only what it changes.
class ForwardingTransport : public Transport {
 public:
  explicit ForwardingTransport(std::unique_ptr<Transport> inner) : inner_(std::move(inner)) {}
  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }
  std::string_view name() const noexcept override { return inner_->name(); }
  Tag max_tag() const noexcept override { return inner_->max_tag(); }
  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    return inner_->isend(peer, tag, data);
  }
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override {
    return inner_->irecv(peer, tag, data);
  }
  bool test(Request& request) override { return inner_->test(request); }
  void wait_all(std::span<Request* const> requests, Deadline deadline) override {
    inner_->wait_all(requests, deadline);
  }
  void cancel(PendingOp& op) noexcept override { inner_->cancel(op); }
  void notify_failure(const Error& error) noexcept override { inner_->notify_failure(error); }

 protected:
  Transport& inner() noexcept { return *inner_; }

 private:
  std::unique_ptr<Transport> inner_;
};

// On the rank it is armed on, `corrupt(buffer, bytes)` rewrites the first message that rank
// receives into a non-empty buffer, once, when it has arrived: what a peer with corrupt memory
// would have sent.
class CorruptFirstReceive final : public ForwardingTransport {
 public:
  using Corrupt = std::function<void(std::span<std::byte> buffer, std::size_t bytes)>;
  CorruptFirstReceive(std::unique_ptr<Transport> inner, bool armed, Corrupt corrupt)
      : ForwardingTransport(std::move(inner)), armed_(armed), corrupt_(std::move(corrupt)) {}
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override {
    Request r = ForwardingTransport::irecv(peer, tag, data);
    if (armed_ && buffer_.empty()) {
      first_ = r.op();
      buffer_ = data;
    }
    return r;
  }
  bool test(Request& request) override {
    const bool done = ForwardingTransport::test(request);
    if (done) arrived(request);
    return done;
  }
  void wait_all(std::span<Request* const> requests, Deadline deadline) override {
    ForwardingTransport::wait_all(requests, deadline);
    for (Request* r : requests) arrived(*r);
  }

 private:
  void arrived(const Request& request) {
    if (!armed_ || request.op() != first_) return;
    armed_ = false;
    corrupt_(buffer_, request.bytes());
  }
  bool armed_;
  Corrupt corrupt_;
  const PendingOp* first_ = nullptr;
  std::span<std::byte> buffer_;
};

}  // namespace frugal::testing
