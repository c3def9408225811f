#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace frugal {

class Error;

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;
using Tag = std::uint32_t;

class Transport;

enum class OpKind : std::uint8_t { Send, Recv };

// State of one non-blocking operation. Each transport derives its own; the fields here are what
// error messages and callers need whatever the transport.
class PendingOp {
 public:
  PendingOp(Transport& owner, OpKind kind, int peer, Tag tag, std::size_t posted_bytes)
      : owner(&owner), kind(kind), peer(peer), tag(tag), posted_bytes(posted_bytes) {}
  virtual ~PendingOp() = default;
  PendingOp(const PendingOp&) = delete;
  PendingOp& operator=(const PendingOp&) = delete;

  Transport* owner;
  OpKind kind;
  int peer;
  Tag tag;
  std::size_t posted_bytes;
  std::size_t transferred_bytes = 0;  // for receives: the size of the matched message
  // Set by the owning transport only (possibly from another thread for in-process transports).
  std::atomic<bool> complete{false};

  // "recv from peer 3 tag 0x2a (4096 bytes)": used in every error about this operation.
  std::string describe() const;
};

// Move-only handle to a non-blocking send or receive. The buffer given to isend/irecv is the
// caller's and must stay valid until the request completes or is destroyed. Destroying an
// unfinished request cancels it (after which the transport no longer touches the buffer; on MPI a
// send that cannot be cancelled is waited for, boundedly). A request must not outlive its
// transport.
class Request {
 public:
  Request() = default;
  explicit Request(std::unique_ptr<PendingOp> op) : op_(std::move(op)) {}
  Request(Request&&) noexcept = default;
  Request& operator=(Request&& other) noexcept;
  ~Request();

  bool valid() const noexcept { return op_ != nullptr; }
  bool done() const noexcept { return op_ == nullptr || op_->complete; }
  // Bytes the operation moved; for a receive this can be less than the buffer.
  std::size_t bytes() const noexcept { return op_ ? op_->transferred_bytes : 0; }
  PendingOp* op() const noexcept { return op_.get(); }

  // Cancels if unfinished and releases the operation; done() is true afterwards.
  void reset() noexcept;

 private:
  std::unique_ptr<PendingOp> op_;
};

// Non-blocking tagged point-to-point messaging between the ranks of one group. Messages from one
// sender with one tag are matched in the order they were sent (MPI's non-overtaking rule); a
// receive buffer may be larger than the message, never smaller (that is a Mismatch error).
//
// Thread-safety: a transport is driven by one thread at a time. Errors: every method throws
// frugal::Error; Timeout and PeerFailure name the rank, peer and tag.
class Transport {
 public:
  virtual ~Transport() = default;

  virtual int rank() const noexcept = 0;
  virtual int size() const noexcept = 0;
  virtual std::string_view name() const noexcept = 0;
  // Largest tag value the transport accepts (MPI_TAG_UB for MPI).
  virtual Tag max_tag() const noexcept = 0;

  virtual Request isend(int peer, Tag tag, std::span<const std::byte> data) = 0;
  virtual Request irecv(int peer, Tag tag, std::span<std::byte> data) = 0;

  // Makes progress once and reports whether the request has completed. Throws the request's
  // error if it failed.
  virtual bool test(Request& request) = 0;

  // Blocks until every request has completed; throws Timeout naming the first unfinished one if
  // the deadline passes first. Invalid (empty) requests count as complete.
  virtual void wait_all(std::span<Request* const> requests, Deadline deadline);
  void wait(Request& request, Deadline deadline);

  // Called by Request when it is destroyed unfinished. Must leave the buffer untouched afterwards.
  virtual void cancel(PendingOp& op) noexcept = 0;

  // Tells every peer, best effort and without blocking, that this rank gave up on its collective
  // (Communicator::fail calls it), so that peers waiting on it fail at once (PeerFailure naming
  // this rank) instead of each waiting out its own deadline in turn. Transports that see a dead
  // or exiting peer by themselves need not do anything (the default).
  virtual void notify_failure(const Error& error) noexcept { (void)error; }

 protected:
  // Called by wait_all while it idles on `waiting_for`: throws PeerFailure if a peer has
  // announced, through notify_failure, that it gave up (the message names both that peer and the
  // operation this rank was waiting for). The default does nothing.
  virtual void check_peer_failures(const PendingOp& waiting_for) { (void)waiting_for; }

  // Message for a Timeout/PeerFailure about `op` from this rank.
  std::string context(const PendingOp& op) const;
  void check_peer(int peer, std::string_view what) const;
};

}  // namespace frugal
