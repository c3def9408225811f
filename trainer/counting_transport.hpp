#pragma once

// A Transport that forwards to another and counts the payload bytes this rank sends, so the
// trainer can report the bytes its gradients really put on the wire (collective headers and
// every collective included), whatever the method and algorithm.

#include <atomic>
#include <cstdint>
#include <memory>

#include "frugal/transport.hpp"

namespace frugal::train {

class CountingTransport final : public Transport {
 public:
  explicit CountingTransport(std::unique_ptr<Transport> inner) : inner_(std::move(inner)) {}

  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }
  std::string_view name() const noexcept override { return inner_->name(); }
  Tag max_tag() const noexcept override { return inner_->max_tag(); }
  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    Request request = inner_->isend(peer, tag, data);
    sent_.fetch_add(data.size(), std::memory_order_relaxed);
    return request;
  }
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override {
    return inner_->irecv(peer, tag, data);
  }
  bool test(Request& request) override { return inner_->test(request); }
  void wait_all(std::span<Request* const> requests, Deadline deadline) override {
    inner_->wait_all(requests, deadline);
  }
  // Requests are owned by the inner transport's operations (PendingOp::owner), so cancellation
  // goes there directly; this is never reached but must exist.
  void cancel(PendingOp& op) noexcept override { inner_->cancel(op); }

  // Bytes passed to isend so far (thread-safe: the progress engine sends while the trainer reads).
  std::uint64_t bytes_sent() const noexcept { return sent_.load(std::memory_order_relaxed); }

 private:
  std::unique_ptr<Transport> inner_;
  std::atomic<std::uint64_t> sent_{0};
};

}  // namespace frugal::train
