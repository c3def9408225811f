// A transport wrapped to inject faults into the compressed allreduces (sparse_fault_test,
// two_phase_pipeline_test): a failed wait or test, and receives from one peer held back so that
// they arrive after every other. It writes into a receive buffer (and reads a send buffer) when
// its request is cancelled, as a late delivery racing the cancel would: a request cancelled after
// its buffer was freed is then a use after free, which the sanitizer build reports.
#pragma once

#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "frugal/error.hpp"
#include "frugal/transport.hpp"

namespace frugal::testing {

inline constexpr const char* kInjected = "injected transport failure";

// The inner transport's request, wrapped so that cancels come to FaultTransport.
class WrappedOp final : public PendingOp {
 public:
  WrappedOp(Transport& owner, OpKind kind, int peer, Tag tag, std::span<std::byte> buffer,
            Request inner, std::atomic<int>& live)
      : PendingOp(owner, kind, peer, tag, buffer.size()),
        buffer(buffer),
        inner(std::move(inner)),
        live_(live) {
    ++live_;
  }
  ~WrappedOp() override { --live_; }

  std::span<std::byte> buffer;  // the caller's (a send's is only read)
  Request inner;

 private:
  std::atomic<int>& live_;
};

// What a FaultTransport injects; all off by default.
struct Faults {
  // Wait number `fail_wait` (counting from 0) throws Transport.
  std::optional<int> fail_wait;
  // The `fail_arrival`-th receive to complete in test() (counting from 0) throws Transport
  // instead: a failure in the middle of a poll for whichever message comes first.
  std::optional<int> fail_arrival;
  // Receives from this peer never complete in test(), only in wait_all: a rank that polls sees
  // them arrive after everything else it polls for.
  std::optional<int> held_peer;
};

// Forwards to another transport (loopback, or under mpirun the test communicator's), injecting
// `faults`.
class FaultTransport final : public Transport {
 public:
  FaultTransport(std::unique_ptr<Transport> inner, Faults faults)
      : owned_(std::move(inner)), inner_(owned_.get()), faults_(faults) {}
  // Borrows `inner`, which must outlive this transport and its requests.
  FaultTransport(Transport& inner, Faults faults) : inner_(&inner), faults_(faults) {}

  int rank() const noexcept override { return inner_->rank(); }
  int size() const noexcept override { return inner_->size(); }
  std::string_view name() const noexcept override { return inner_->name(); }
  Tag max_tag() const noexcept override { return inner_->max_tag(); }

  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    Request r = inner_->isend(peer, tag, data);
    // Only read back (in cancel): the const is cast away to share the wrapper with receives.
    const std::span<std::byte> buffer(const_cast<std::byte*>(data.data()), data.size());
    return Request(
        std::make_unique<WrappedOp>(*this, OpKind::Send, peer, tag, buffer, std::move(r), live_));
  }
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override {
    Request r = inner_->irecv(peer, tag, data);
    return Request(
        std::make_unique<WrappedOp>(*this, OpKind::Recv, peer, tag, data, std::move(r), live_));
  }

  bool test(Request& request) override {
    if (request.done()) return true;
    auto& op = static_cast<WrappedOp&>(*request.op());
    if (op.kind == OpKind::Recv && faults_.held_peer == op.peer) return false;
    if (!inner_->test(op.inner)) return false;
    if (op.kind == OpKind::Recv && faults_.fail_arrival && arrivals_++ == *faults_.fail_arrival) {
      injected_ = true;
      throw Error(ErrorCode::Transport, std::string(kInjected) + " on rank " +
                                            std::to_string(rank()) + " at arrival " +
                                            std::to_string(*faults_.fail_arrival));
    }
    finish(op);
    return true;
  }

  void wait_all(std::span<Request* const> requests, Deadline deadline) override {
    if (faults_.fail_wait && waits_++ == *faults_.fail_wait) {
      injected_ = true;
      throw Error(ErrorCode::Transport, std::string(kInjected) + " on rank " +
                                            std::to_string(rank()) + " at wait " +
                                            std::to_string(*faults_.fail_wait));
    }
    std::vector<Request*> inner;
    for (Request* r : requests) {
      if (!r->done()) inner.push_back(&static_cast<WrappedOp&>(*r->op()).inner);
    }
    inner_->wait_all(inner, deadline);
    for (Request* r : requests) {
      if (!r->done()) finish(static_cast<WrappedOp&>(*r->op()));
    }
  }

  void cancel(PendingOp& base) noexcept override {
    auto& op = static_cast<WrappedOp&>(base);
    op.inner.reset();
    // What a transport may still do to a buffer until its cancel returns.
    if (op.kind == OpKind::Recv) {
      std::memset(op.buffer.data(), 0xa5, op.buffer.size());
    } else {
      unsigned sum = 0;
      for (const std::byte b : op.buffer) sum += static_cast<unsigned>(b);
      checksum_ += sum;
    }
    ++cancelled_;
  }

  void notify_failure(const Error& error) noexcept override { inner_->notify_failure(error); }

  int live() const noexcept { return live_; }
  bool injected() const noexcept { return injected_; }
  int cancelled() const noexcept { return cancelled_; }
  // The peers of the completed receives, in the order they completed.
  std::vector<int> arrivals() const {
    std::lock_guard lock(mutex_);
    return arrived_from_;
  }

 private:
  void finish(WrappedOp& op) {
    op.transferred_bytes = op.inner.bytes();
    op.complete = true;
    if (op.kind == OpKind::Recv) {
      std::lock_guard lock(mutex_);
      arrived_from_.push_back(op.peer);
    }
  }

  std::unique_ptr<Transport> owned_;
  Transport* inner_;
  Faults faults_;
  int waits_ = 0;
  int arrivals_ = 0;
  bool injected_ = false;
  int cancelled_ = 0;
  unsigned checksum_ = 0;
  std::atomic<int> live_{0};
  mutable std::mutex mutex_;
  std::vector<int> arrived_from_;
};

}  // namespace frugal::testing
