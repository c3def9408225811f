#include <algorithm>
#include <array>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <deque>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "frugal/error.hpp"
#include "frugal/mpi.hpp"

namespace frugal {

namespace {

bool mpi_finalized() {
  int finalized = 0;
  MPI_Finalized(&finalized);
  return finalized != 0;
}

// Set once any MPI communicator has failed (timeout, dead or stopped peer, mismatch).
std::atomic<bool> g_peer_trouble{false};

void finalize_at_exit() {
  // MPI_Finalize synchronises with every rank in Open MPI: after a peer failure it would hang
  // on a stopped peer, so the process leaves without it (mpirun then reports the rank as having
  // exited without finalising, and ends the job).
  if (!mpi_finalized() && !g_peer_trouble.load()) MPI_Finalize();
}

// Owns the duplicated communicator. Freed only while MPI is still up: after MPI_Finalize the
// handle is already gone.
class MpiComm {
 public:
  explicit MpiComm(MPI_Comm parent) {
    int rc = MPI_Comm_dup(parent, &comm_);
    if (rc != MPI_SUCCESS) throw mpi_error(rc, "MPI_Comm_dup");
    rc = MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    if (rc != MPI_SUCCESS) {
      MPI_Comm_free(&comm_);
      throw mpi_error(rc, "MPI_Comm_set_errhandler");
    }
  }
  ~MpiComm() {
    if (comm_ != MPI_COMM_NULL && !mpi_finalized()) MPI_Comm_free(&comm_);
  }
  MpiComm(const MpiComm&) = delete;
  MpiComm& operator=(const MpiComm&) = delete;

  MPI_Comm get() const noexcept { return comm_; }

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
};

struct MpiOp final : PendingOp {
  using PendingOp::PendingOp;
  MPI_Request request = MPI_REQUEST_NULL;
  // Receives only. Until `matched`, MPI holds nothing of the receive (see irecv), so it can be
  // dropped at any time; once matched, MPI owns the destination until the request completes.
  std::span<std::byte> buffer;
  bool matched = false;
  int imrecv_error = MPI_SUCCESS;
  // A message larger than `buffer` is drained here, never into the caller's memory.
  std::vector<std::byte> overflow;
};

class MpiTransport final : public Transport {
 public:
  explicit MpiTransport(MPI_Comm parent) : comm_(parent), abort_comm_(parent) {
    MPI_Comm_rank(comm_.get(), &rank_);
    MPI_Comm_size(comm_.get(), &size_);
    int* tag_ub = nullptr;
    int found = 0;
    MPI_Comm_get_attr(comm_.get(), MPI_TAG_UB, &tag_ub, &found);
    // The standard guarantees at least 32767.
    max_tag_ = (found != 0 && tag_ub != nullptr) ? static_cast<Tag>(*tag_ub) : 32767;
    post_abort_recv();
  }

  ~MpiTransport() override {
    if (mpi_finalized()) return;
    if (abort_recv_ != MPI_REQUEST_NULL) {
      MPI_Cancel(&abort_recv_);
      MPI_Wait(&abort_recv_, MPI_STATUS_IGNORE);
    }
    // Small sends go out eagerly; a stopped or dead peer must not hold up this destructor.
    for (MPI_Request& r : abort_sends_) {
      if (r != MPI_REQUEST_NULL) MPI_Request_free(&r);
    }
  }
  MpiTransport(const MpiTransport&) = delete;
  MpiTransport& operator=(const MpiTransport&) = delete;

  // Open MPI sees neither a stopped peer nor (with --enable-recovery, or before mpirun reacts) a
  // dead one, so a rank that gives up tells the others on a communicator of its own; a rank
  // waiting on it then fails at once instead of waiting out its deadline, which keeps a cascade
  // of waits inside one timeout.
  void notify_failure(const Error& error) noexcept override {
    failing_ = true;
    g_peer_trouble.store(true);
    if (mpi_finalized() || !abort_sends_.empty() || peer_failure_) return;
    abort_out_ = error.what();
    abort_out_.resize(std::min(abort_out_.size(), kAbortBytes));
    abort_sends_.assign(static_cast<std::size_t>(size_), MPI_REQUEST_NULL);
    for (int q = 0; q < size_; ++q) {
      if (q == rank_) continue;
      MPI_Isend(abort_out_.data(), static_cast<int>(abort_out_.size()), MPI_BYTE, q, 0,
                abort_comm_.get(), &abort_sends_[static_cast<std::size_t>(q)]);
    }
  }

  int rank() const noexcept override { return rank_; }
  int size() const noexcept override { return size_; }
  std::string_view name() const noexcept override { return "mpi"; }
  Tag max_tag() const noexcept override { return max_tag_; }

  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    auto op = make_op(OpKind::Send, peer, tag, data.size());
    const int rc = MPI_Isend(data.data(), static_cast<int>(data.size()), MPI_BYTE, peer,
                             static_cast<int>(tag), comm_.get(), &op->request);
    if (rc != MPI_SUCCESS) throw mpi_error(rc, where(*op) + ": MPI_Isend");
    return Request(std::move(op));
  }

  // Receives are not posted with MPI_Irecv: Open MPI 4.1's shared-memory single-copy path (btl
  // vader with CMA) writes a message larger than the posted buffer past its end instead of
  // failing with MPI_ERR_TRUNCATE. Each receive instead waits in a per-(peer, tag) queue until
  // MPI_Improbe sees its message, whose size is then known before any byte is written
  // (match_queue). MPI matches probes in send order per (peer, tag), as it would receives. The
  // price is on small messages, which now always arrive unexpected (one more copy): about
  // +0.4-0.9 us (8-19%) per 4 KiB allreduce, np 2 on shared memory; 1 MiB and 64 MiB unchanged.
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override {
    auto owned = make_op(OpKind::Recv, peer, tag, data.size());
    MpiOp& op = *owned;
    op.buffer = data;
    // Owned by its Request before it is queued: if queueing throws, the Request's cancel finds
    // nothing to dequeue. Matching waits for the first test (no progress call here).
    Request request(std::move(owned));
    unmatched_[{peer, tag}].push_back(&op);
    ++unmatched_count_;
    return request;
  }

  void wait_all(std::span<Request* const> requests, Deadline deadline) override {
    try {
      Transport::wait_all(requests, deadline);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::Timeout || e.code() == ErrorCode::PeerFailure) failing_ = true;
      throw;
    }
  }

  bool test(Request& request) override {
    if (request.done()) return true;
    auto& op = static_cast<MpiOp&>(*request.op());
    if (op.kind == OpKind::Recv && !op.matched) {
      match_all();
      if (!op.matched) return false;
    }
    if (op.kind == OpKind::Recv && op.imrecv_error != MPI_SUCCESS) {
      op.complete = true;
      throw mpi_error(op.imrecv_error, where(op) + ": MPI_Imrecv");
    }
    int flag = 0;
    MPI_Status status;
    const int rc = MPI_Test(&op.request, &flag, &status);
    if (rc != MPI_SUCCESS) {
      op.complete = true;  // MPI has released the request
      throw mpi_error(rc, where(op));
    }
    if (flag == 0) {
      // Every queued receive, not only this request's: a peer's large send completes only once
      // its receive has matched, so leaving receives unprobed while waiting on a send (or on
      // another receive) could deadlock.
      if (unmatched_count_ > 0) match_all();
      return false;
    }
    if (op.kind == OpKind::Recv) {
      if (!op.overflow.empty()) {
        op.overflow = {};
        op.complete = true;
        throw Error(ErrorCode::Mismatch,
                    where(op) + ": the message has " + std::to_string(op.transferred_bytes) +
                        " bytes, more than the " + std::to_string(op.posted_bytes) +
                        " posted for it (the ranks disagree on its size; it was discarded)");
      }
    } else {
      op.transferred_bytes = op.posted_bytes;
    }
    op.complete = true;
    return true;
  }

  void cancel(PendingOp& base) noexcept override {
    auto& op = static_cast<MpiOp&>(base);
    if (op.kind == OpKind::Recv && !op.matched) {
      // MPI holds nothing of an unmatched receive: dropping it from its queue is the whole
      // cancellation, and its message stays for the next receive on that peer and tag.
      dequeue(op);
      return;
    }
    if (op.request == MPI_REQUEST_NULL || mpi_finalized()) return;
    if (op.kind == OpKind::Recv) {
      // A matched receive cannot be cancelled, and MPI writes into its buffer until it completes:
      // freeing the request at once (as this transport used to after a failure) let MPI write
      // into memory the caller then released. Its sender has committed the whole message (eager
      // data is already here; on shared memory the single copy is driven by this rank, and works
      // on a stopped sender too), so it completes unless the sender died mid-transfer, when no
      // more of it can arrive. All receives released after a failure share one bounded wait, so
      // that a dead sender cannot push a survivor past twice its timeout. What is left: over a
      // network, a sender stalled past the bound that later resumes while this process still
      // drives MPI.
      const Deadline give_up =
          failing_ ? failure_release_deadline() : Clock::now() + std::chrono::seconds(1);
      if (!complete_by(op.request, give_up)) MPI_Request_free(&op.request);
      return;
    }
    // A send that was already matched cannot be cancelled; give it a bounded time to finish, then
    // let MPI complete it on its own so that an error path never hangs on a dead peer. (MPI may
    // then still read the released buffer; it writes nothing, but it is a known gap.)
    MPI_Cancel(&op.request);
    if (failing_) {
      // After a timeout or a peer's failure notice the peer is presumed gone: waiting a second
      // for each abandoned send would push survivors past twice the timeout.
      MPI_Request_free(&op.request);
      return;
    }
    if (!complete_by(op.request, Clock::now() + std::chrono::seconds(1))) {
      MPI_Request_free(&op.request);
    }
  }

 protected:
  void check_peer_failures(const PendingOp& waiting_for) override {
    if (!peer_failure_ && abort_recv_ != MPI_REQUEST_NULL) {
      int flag = 0;
      MPI_Status status;
      if (MPI_Test(&abort_recv_, &flag, &status) != MPI_SUCCESS || flag == 0) return;
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      abort_from_ = status.MPI_SOURCE;
      abort_text_.assign(abort_in_.data(), static_cast<std::size_t>(std::max(count, 0)));
      peer_failure_ = true;
    }
    if (!peer_failure_) return;
    failing_ = true;
    throw Error(ErrorCode::PeerFailure, where(waiting_for) + " abandoned: peer " +
                                            std::to_string(abort_from_) +
                                            " gave up on the collective [" + abort_text_ + "]");
  }

 private:
  static constexpr std::size_t kAbortBytes = 1024;

  void post_abort_recv() {
    const int rc = MPI_Irecv(abort_in_.data(), static_cast<int>(abort_in_.size()), MPI_BYTE,
                             MPI_ANY_SOURCE, 0, abort_comm_.get(), &abort_recv_);
    if (rc != MPI_SUCCESS) throw mpi_error(rc, "MPI_Irecv (peer-failure channel)");
  }

  using RecvQueue = std::deque<MpiOp*>;

  // Tests `request` until it completes (true; MPI has released it) or `give_up` passes.
  static bool complete_by(MPI_Request& request, Deadline give_up) noexcept {
    do {
      int flag = 0;
      if (MPI_Test(&request, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS || flag != 0) return true;
    } while (Clock::now() < give_up);
    return false;
  }

  Deadline failure_release_deadline() noexcept {
    if (!failure_release_deadline_) {
      failure_release_deadline_ = Clock::now() + std::chrono::seconds(1);
    }
    return *failure_release_deadline_;
  }

  // Matches the oldest queued receives on (peer, tag) to the messages MPI has for them, in order.
  void match_queue(int peer, Tag tag, RecvQueue& queue) {
    while (!queue.empty()) {
      int flag = 0;
      MPI_Message message = MPI_MESSAGE_NULL;
      MPI_Status status;
      const int rc =
          MPI_Improbe(peer, static_cast<int>(tag), comm_.get(), &flag, &message, &status);
      if (rc != MPI_SUCCESS) throw mpi_error(rc, where(*queue.front()) + ": MPI_Improbe");
      if (flag == 0) return;
      MpiOp& op = *queue.front();
      queue.pop_front();
      --unmatched_count_;
      int count = 0;
      MPI_Get_count(&status, MPI_BYTE, &count);
      op.matched = true;
      op.transferred_bytes = static_cast<std::size_t>(std::max(count, 0));
      std::byte* destination = op.buffer.data();
      if (op.transferred_bytes > op.posted_bytes) {
        op.overflow.resize(op.transferred_bytes);
        destination = op.overflow.data();
      }
      // Exactly the message's size: MPI never has to truncate.
      op.imrecv_error = MPI_Imrecv(destination, count, MPI_BYTE, &message, &op.request);
    }
  }

  void match_all() {
    for (auto it = unmatched_.begin(); it != unmatched_.end();) {
      match_queue(it->first.first, it->first.second, it->second);
      it = it->second.empty() ? unmatched_.erase(it) : std::next(it);
    }
  }

  void dequeue(MpiOp& op) noexcept {
    const auto it = unmatched_.find({op.peer, op.tag});
    if (it == unmatched_.end()) return;
    const auto pos = std::find(it->second.begin(), it->second.end(), &op);
    if (pos == it->second.end()) return;
    it->second.erase(pos);
    --unmatched_count_;
    if (it->second.empty()) unmatched_.erase(it);
  }

  std::unique_ptr<MpiOp> make_op(OpKind kind, int peer, Tag tag, std::size_t bytes) {
    check_peer(peer, kind == OpKind::Send ? "isend" : "irecv");
    if (tag > max_tag_) {
      throw Error(ErrorCode::InvalidArgument,
                  "tag " + std::to_string(tag) + " exceeds MPI_TAG_UB " + std::to_string(max_tag_));
    }
    if (bytes > static_cast<std::size_t>(INT_MAX)) {
      throw Error(ErrorCode::InvalidArgument,
                  "message of " + std::to_string(bytes) +
                      " bytes exceeds MPI's int count; split it (frugal's collectives segment "
                      "large buffers)");
    }
    return std::make_unique<MpiOp>(*this, kind, peer, tag, bytes);
  }

  std::string where(const PendingOp& op) const {
    return "rank " + std::to_string(rank_) + " of " + std::to_string(size_) +
           " (mpi): " + op.describe();
  }

  MpiComm comm_;
  MpiComm abort_comm_;  // peer-failure notices only (notify_failure / check_peer_failures)
  std::array<char, kAbortBytes> abort_in_{};
  MPI_Request abort_recv_ = MPI_REQUEST_NULL;
  std::string abort_out_;
  std::vector<MPI_Request> abort_sends_;
  bool peer_failure_ = false;  // a peer's failure notice arrived
  int abort_from_ = -1;
  std::string abort_text_;
  bool failing_ = false;  // a wait failed: unfinished sends are released, not waited for
  // Set at the first release of an in-flight receive after a failure (see cancel).
  std::optional<Deadline> failure_release_deadline_;
  // Posted receives not yet matched to a message, oldest first per (peer, tag).
  std::map<std::pair<int, Tag>, RecvQueue> unmatched_;
  std::size_t unmatched_count_ = 0;
  int rank_ = 0;
  int size_ = 0;
  Tag max_tag_ = 32767;
};

}  // namespace

Error mpi_error(int code, const std::string& context) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  int error_class = MPI_ERR_OTHER;
  MPI_Error_class(code, &error_class);
  ErrorCode mapped = ErrorCode::Transport;
  switch (error_class) {
    case MPI_ERR_TRUNCATE:
      mapped = ErrorCode::Mismatch;
      break;
    case MPI_ERR_RANK:
    case MPI_ERR_TAG:
    case MPI_ERR_COUNT:
    case MPI_ERR_BUFFER:
    case MPI_ERR_ARG:
      mapped = ErrorCode::InvalidArgument;
      break;
#ifdef MPIX_ERR_PROC_FAILED
    case MPIX_ERR_PROC_FAILED:
      mapped = ErrorCode::PeerFailure;
      break;
#endif
    default:
      break;
  }
  return Error(mapped, context + ": " + std::string(text, static_cast<std::size_t>(length)));
}

void ensure_mpi_initialized() {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized != 0) {
    if (mpi_finalized()) {
      throw Error(ErrorCode::Transport,
                  "MPI has already been finalised; cannot create an MPI "
                  "communicator");
    }
    return;
  }
  int provided = 0;
  const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
  if (rc != MPI_SUCCESS) throw Error(ErrorCode::Transport, "MPI_Init_thread failed");
  std::atexit(finalize_at_exit);
}

std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm) {
  ensure_mpi_initialized();
  return std::make_unique<MpiTransport>(comm);
}

std::unique_ptr<Communicator> make_mpi_communicator(MPI_Comm comm, CommunicatorOptions options) {
  return std::make_unique<Communicator>(make_mpi_transport(comm), options);
}

}  // namespace frugal
