#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "../patterns/exchange.hpp"
#include "frugal/collectives/options.hpp"
#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/transport.hpp"

namespace frugal::detail {

// One running collective: its tag, its timeout, and the communicator it fails if it breaks.
class CollectiveContext {
 public:
  CollectiveContext(Communicator& comm, const CollectiveOptions& options)
      : comm_(comm),
        transport_(comm.transport()),
        tag_(comm.begin_collective()),
        timeout_(options.timeout.value_or(comm.timeout())),
        segment_bytes_(options.segment_bytes == 0 ? kDefaultSegmentBytes : options.segment_bytes) {}

  int rank() const noexcept { return transport_.rank(); }
  int size() const noexcept { return transport_.size(); }
  Tag tag() const noexcept { return tag_; }
  std::size_t segment_bytes() const noexcept { return segment_bytes_; }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

  Request isend(int peer, std::span<const std::byte> data) {
    bytes_sent_ += data.size();
    return transport_.isend(peer, tag_, data);
  }
  // Payload bytes this rank has sent in this collective.
  std::size_t bytes_sent() const noexcept { return bytes_sent_; }
  Request irecv(int peer, std::span<std::byte> data) { return transport_.irecv(peer, tag_, data); }

  // Each wait gets the full timeout: the bound is on a peer's silence, not on the whole
  // collective, so a large message on a slow link is not mistaken for a dead peer.
  void wait(Request& request) { transport_.wait(request, Clock::now() + timeout_); }
  void wait_all(std::span<Request* const> requests) {
    transport_.wait_all(requests, Clock::now() + timeout_);
  }
  void wait_all(std::span<Request> requests);

  // Waits for a receive and checks that the whole expected message arrived.
  void wait_recv(Request& request, std::size_t expected_bytes);
  // The check of wait_recv alone, for a receive that has completed.
  void check_recv(const Request& request, std::size_t expected_bytes) const;

  // Tests every unfinished request once (throwing what a test throws). MPI and UCX move a large
  // message only inside their calls, so a rank that computes between posting and waiting calls
  // this now and then to keep its transfers going.
  void progress(std::span<Request> requests);

  // Returns the index of a request of `pending` that has completed, so that the caller can work
  // on messages in the order they arrive: the first found complete by one test of each, else
  // pending[0] once wait() has seen it complete (the full timeout, and the transport's check
  // for a peer that gave up), so put first the request expected first.
  std::size_t wait_any(std::span<Request* const> pending);

  void sendrecv(int to, std::span<const std::byte> out, int from, std::span<std::byte> in);

  // Posts a receive from every other rank q into recv_buffer(q) and a send of send_buffer(q) to
  // it, in the pairwise order of patterns/exchange.hpp. Both vectors are indexed by peer (the
  // entry for this rank stays empty).
  struct Exchange {
    std::vector<Request> recvs;
    std::vector<Request> sends;
  };
  template <typename RecvBuffer, typename SendBuffer>
  Exchange post_exchange(RecvBuffer&& recv_buffer, SendBuffer&& send_buffer);
  // The receives of post_exchange alone (sends left empty), for a caller that produces each
  // message just before it sends it, to exchange_send_peer(rank(), size(), s) for s = 1..P-1.
  template <typename RecvBuffer>
  Exchange post_receives(RecvBuffer&& recv_buffer);

  Communicator& communicator() noexcept { return comm_; }

 private:
  Communicator& comm_;
  Transport& transport_;
  Tag tag_;
  std::chrono::milliseconds timeout_;
  std::size_t segment_bytes_;
  std::size_t bytes_sent_ = 0;
};

template <typename RecvBuffer>
CollectiveContext::Exchange CollectiveContext::post_receives(RecvBuffer&& recv_buffer) {
  const int p = size();
  Exchange e;
  e.recvs.resize(static_cast<std::size_t>(p));
  e.sends.resize(static_cast<std::size_t>(p));
  for (int s = 1; s < p; ++s) {
    const int q = patterns::exchange_recv_peer(rank(), p, s);
    e.recvs[static_cast<std::size_t>(q)] = irecv(q, recv_buffer(q));
  }
  return e;
}

template <typename RecvBuffer, typename SendBuffer>
CollectiveContext::Exchange CollectiveContext::post_exchange(RecvBuffer&& recv_buffer,
                                                             SendBuffer&& send_buffer) {
  const int p = size();
  Exchange e = post_receives(recv_buffer);
  for (int s = 1; s < p; ++s) {
    const int q = patterns::exchange_send_peer(rank(), p, s);
    e.sends[static_cast<std::size_t>(q)] = isend(q, send_buffer(q));
  }
  return e;
}

// An error every rank of a collective reached together, having finished the same exchanges (a
// peer refused its arguments, refusal.hpp): no rank is left mid-collective, so unlike other
// errors it does not fail the communicator, whatever its code.
class AgreedError : public Error {
 public:
  using Error::Error;
};

// Runs a collective body; any error but InvalidArgument and AgreedError fails the communicator,
// since peers may be left mid-collective.
template <typename Body>
void run_collective(Communicator& comm, const CollectiveOptions& options, Body&& body) {
  CollectiveContext ctx(comm, options);
  try {
    body(ctx);
  } catch (const AgreedError&) {
    throw;
  } catch (const Error& e) {
    if (e.code() != ErrorCode::InvalidArgument) comm.fail(e);
    throw;
  } catch (const std::exception& e) {
    const Error wrapped(ErrorCode::Internal, e.what());
    comm.fail(wrapped);
    throw wrapped;
  }
}

// The pipelined compressed algorithms (sparse recursive doubling, the allgather of segmented
// payloads) move an n-element buffer in ranges of at least this many elements, message by
// message, so that merging or encoding one range overlaps the transfer of the next.
std::size_t pipeline_range_elements(std::size_t n) noexcept;
// White-box tests only, not an option: sets the least range (0 restores the default), so that
// small buffers run several ranges. Every rank of a collective must see the same value.
void set_pipeline_min_range_elements_for_tests(std::size_t elements) noexcept;

// Uninitialised scratch memory: zero-filling megabytes per call would cost as much as the copy.
inline std::unique_ptr<std::byte[]> scratch(std::size_t bytes) {
  return std::make_unique_for_overwrite<std::byte[]>(bytes == 0 ? 1 : bytes);
}

}  // namespace frugal::detail
