#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "frugal/error.hpp"
#include "frugal/loopback.hpp"

namespace frugal {

namespace {

struct LoopbackOp final : PendingOp {
  LoopbackOp(Transport& owner, OpKind kind, int self, int peer, Tag tag, std::byte* recv_buf,
             const std::byte* send_buf, std::size_t bytes)
      : PendingOp(owner, kind, peer, tag, bytes),
        self(self),
        recv_buf(recv_buf),
        send_buf(send_buf) {}
  int self;
  std::byte* recv_buf;
  const std::byte* send_buf;
  std::optional<Error> error;  // set when matched with a failure (e.g. truncation)
};

// A send that no receive has matched yet: either the sender's own buffer (rendezvous) or, for
// small messages, a copy (eager, like MPI's eager protocol), which stays deliverable after the
// sender's request is gone.
struct Unmatched {
  LoopbackOp* op = nullptr;  // rendezvous: the sender's operation; null when eager
  int source = 0;
  Tag tag = 0;
  std::vector<std::byte> copy;  // eager payload
};

}  // namespace

// Messages up to this size are copied at isend and complete at once.
constexpr std::size_t kLoopbackEagerBytes = 4096;

// All queues live behind one mutex: tests run a handful of ranks, and one lock keeps matching
// obviously correct (FIFO per sender and tag, like MPI).
class LoopbackFabric {
 public:
  explicit LoopbackFabric(int size) : unexpected_(size), posted_(size), dead_(size, false) {}

  void post_send(LoopbackOp& op) {
    std::lock_guard lock(mutex_);
    if (reject_if_dead(op)) return;
    if (dead_[op.peer]) {
      op.error =
          Error(ErrorCode::PeerFailure, "rank " + std::to_string(op.self) + " (loopback): peer " +
                                            std::to_string(op.peer) + " has failed; " +
                                            op.describe() + " cannot complete");
      op.complete = true;
      return;
    }
    auto& receives = posted_[op.peer];
    auto it = std::find_if(receives.begin(), receives.end(),
                           [&](LoopbackOp* r) { return r->peer == op.self && r->tag == op.tag; });
    if (it != receives.end()) {
      LoopbackOp* recv = *it;
      receives.erase(it);
      deliver(op.send_buf, op.posted_bytes, *recv);
      complete_send(op);
    } else if (op.posted_bytes <= kLoopbackEagerBytes) {
      unexpected_[op.peer].push_back(
          Unmatched{nullptr, op.self, op.tag, {op.send_buf, op.send_buf + op.posted_bytes}});
      complete_send(op);
    } else {
      unexpected_[op.peer].push_back(Unmatched{&op, op.self, op.tag, {}});
    }
  }

  void post_recv(LoopbackOp& op) {
    std::lock_guard lock(mutex_);
    if (reject_if_dead(op)) return;
    auto& sends = unexpected_[op.self];
    auto it = std::find_if(sends.begin(), sends.end(), [&](const Unmatched& s) {
      return s.source == op.peer && s.tag == op.tag;
    });
    if (it != sends.end()) {
      const Unmatched send = std::move(*it);
      sends.erase(it);
      if (send.op != nullptr) {
        deliver(send.op->send_buf, send.op->posted_bytes, op);
        complete_send(*send.op);
      } else {
        deliver(send.copy.data(), send.copy.size(), op);
      }
    } else {
      posted_[op.self].push_back(&op);
    }
  }

  // Returns true when complete; throws the op's error or PeerFailure.
  bool poll(LoopbackOp& op, const Transport& t) {
    std::lock_guard lock(mutex_);
    return check(op, t);
  }

  void wait(std::span<Request* const> requests, Deadline deadline, const Transport& t) {
    std::unique_lock lock(mutex_);
    for (Request* r : requests) {
      if (!r->valid()) continue;
      // Not r->done(): a completed receive may carry an error that check() must throw.
      auto& op = static_cast<LoopbackOp&>(*r->op());
      if (!cv_.wait_until(lock, deadline, [&] { return check(op, t); })) {
        throw Error(ErrorCode::Timeout, "rank " + std::to_string(op.self) +
                                            " (loopback): " + op.describe() +
                                            " did not complete before its deadline");
      }
    }
  }

  void cancel(LoopbackOp& op) {
    std::lock_guard lock(mutex_);
    for (auto& q : unexpected_) {
      std::erase_if(q, [&](const Unmatched& s) { return s.op == &op; });
    }
    for (auto& q : posted_) std::erase(q, &op);
  }

  // A crashed rank: its undelivered messages are lost, eager ones included.
  void kill(int rank) { remove(rank, /*keep_eager=*/false); }

  // A rank whose transport is closed (it finished or gave up with an error): what it sent eagerly
  // was already handed to the fabric and still arrives, as with MPI and UCX, whose eager sends
  // complete once the data has left the sender; only its rendezvous sends, which read its own
  // buffers, go with it.
  void leave(int rank) { remove(rank, /*keep_eager=*/true); }

  int size() const { return static_cast<int>(dead_.size()); }

 private:
  void remove(int rank, bool keep_eager) {
    std::lock_guard lock(mutex_);
    dead_[rank] = true;
    unexpected_[rank].clear();
    posted_[rank].clear();
    for (auto& q : unexpected_) {
      std::erase_if(q, [&](const Unmatched& s) {
        return s.source == rank && (!keep_eager || s.op != nullptr);
      });
    }
    cv_.notify_all();
  }

  // A failed rank's own new operations fail at once, so its thread cannot keep talking.
  bool reject_if_dead(LoopbackOp& op) {
    if (!dead_[op.self]) return false;
    op.error = Error(ErrorCode::PeerFailure,
                     "rank " + std::to_string(op.self) + " (loopback) has been marked failed");
    op.complete = true;
    return true;
  }

  void deliver(const std::byte* data, std::size_t bytes, LoopbackOp& recv) {
    if (bytes > recv.posted_bytes) {
      recv.error = Error(ErrorCode::Mismatch,
                         "rank " + std::to_string(recv.self) + " (loopback): message of " +
                             std::to_string(bytes) + " bytes does not fit " + recv.describe());
    } else if (bytes > 0) {
      std::memcpy(recv.recv_buf, data, bytes);
    }
    recv.transferred_bytes = bytes;
    recv.complete = true;
    cv_.notify_all();
  }

  void complete_send(LoopbackOp& send) {
    send.transferred_bytes = send.posted_bytes;
    send.complete = true;
    cv_.notify_all();
  }

  bool check(LoopbackOp& op, const Transport& t) {
    if (op.complete) {
      if (op.error) throw *op.error;
      return true;
    }
    if (dead_[op.peer]) {
      throw Error(ErrorCode::PeerFailure, "rank " + std::to_string(t.rank()) +
                                              " (loopback): peer " + std::to_string(op.peer) +
                                              " has failed; " + op.describe() + " cannot complete");
    }
    return false;
  }

  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::deque<Unmatched>> unexpected_;  // by destination: sends not yet received
  std::vector<std::deque<LoopbackOp*>> posted_;    // by destination: receives not yet matched
  std::vector<bool> dead_;
};

namespace {

class LoopbackTransport final : public Transport {
 public:
  LoopbackTransport(std::shared_ptr<LoopbackFabric> fabric, int rank)
      : fabric_(std::move(fabric)), rank_(rank) {}
  ~LoopbackTransport() override { fabric_->leave(rank_); }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return fabric_->size(); }
  std::string_view name() const noexcept override { return "loopback"; }
  Tag max_tag() const noexcept override { return 0x7fffffff; }

  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    check_peer(peer, "isend");
    auto op = std::make_unique<LoopbackOp>(*this, OpKind::Send, rank_, peer, tag, nullptr,
                                           data.data(), data.size());
    fabric_->post_send(*op);
    return Request(std::move(op));
  }

  Request irecv(int peer, Tag tag, std::span<std::byte> data) override {
    check_peer(peer, "irecv");
    auto op = std::make_unique<LoopbackOp>(*this, OpKind::Recv, rank_, peer, tag, data.data(),
                                           nullptr, data.size());
    fabric_->post_recv(*op);
    return Request(std::move(op));
  }

  bool test(Request& request) override {
    if (!request.valid()) return true;
    return fabric_->poll(static_cast<LoopbackOp&>(*request.op()), *this);
  }

  void wait_all(std::span<Request* const> requests, Deadline deadline) override {
    fabric_->wait(requests, deadline, *this);
  }

  void cancel(PendingOp& op) noexcept override { fabric_->cancel(static_cast<LoopbackOp&>(op)); }

 private:
  std::shared_ptr<LoopbackFabric> fabric_;
  int rank_;
};

}  // namespace

LoopbackGroup make_loopback_group(int size) {
  require(size >= 1, "size", "a loopback group needs at least one rank");
  LoopbackGroup group;
  group.fabric = std::make_shared<LoopbackFabric>(size);
  for (int r = 0; r < size; ++r) {
    group.transports.push_back(std::make_unique<LoopbackTransport>(group.fabric, r));
  }
  return group;
}

void loopback_fail_rank(LoopbackFabric& fabric, int rank) {
  require(rank >= 0 && rank < fabric.size(), "rank", "outside the loopback group");
  fabric.kill(rank);
}

}  // namespace frugal
