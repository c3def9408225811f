#include "collective_context.hpp"

#include <vector>

namespace frugal::detail {

void CollectiveContext::wait_all(std::span<Request> requests) {
  std::vector<Request*> pointers;
  pointers.reserve(requests.size());
  for (Request& r : requests) pointers.push_back(&r);
  wait_all(std::span<Request* const>(pointers));
}

void CollectiveContext::wait_recv(Request& request, std::size_t expected_bytes) {
  const PendingOp* op = request.op();
  const int peer = op != nullptr ? op->peer : -1;
  wait(request);
  if (request.bytes() != expected_bytes) {
    throw Error(ErrorCode::Mismatch, "rank " + std::to_string(rank()) + ": expected " +
                                         std::to_string(expected_bytes) + " bytes from peer " +
                                         std::to_string(peer) + " (tag " + std::to_string(tag_) +
                                         ") but received " + std::to_string(request.bytes()) +
                                         "; do all ranks pass the same count and options?");
  }
}

void CollectiveContext::sendrecv(int to, std::span<const std::byte> out, int from,
                                 std::span<std::byte> in) {
  Request recv = irecv(from, in);
  Request send = isend(to, out);
  wait_recv(recv, in.size());
  wait(send);
}

}  // namespace frugal::detail
