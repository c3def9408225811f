#pragma once

// A Transport that forwards to another and counts the payload bytes this rank sends, so the
// trainer can report the bytes its gradients really put on the wire (collective headers and
// every collective included), whatever the method and algorithm.

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

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
    if (!host_of_.empty() && host_of_[static_cast<std::size_t>(peer)] != host_of_[own_]) {
      cross_host_sent_.fetch_add(data.size(), std::memory_order_relaxed);
    }
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

  // --hierarchical: from now on, also counts the bytes sent to ranks of another host
  // (host_of_rank[r] is rank r's host). Call it before anything else sends (sub-communicators
  // send through this transport with parent ranks, so their bytes are counted alike).
  void set_hosts(std::vector<int> host_of_rank) {
    host_of_ = std::move(host_of_rank);
    own_ = static_cast<std::size_t>(rank());
  }
  std::uint64_t cross_host_bytes_sent() const noexcept {
    return cross_host_sent_.load(std::memory_order_relaxed);
  }

 private:
  std::unique_ptr<Transport> inner_;
  std::atomic<std::uint64_t> sent_{0};
  std::vector<int> host_of_;  // empty: no host counting
  std::size_t own_ = 0;
  std::atomic<std::uint64_t> cross_host_sent_{0};
};

}  // namespace frugal::train
