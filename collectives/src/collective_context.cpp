#include "collective_context.hpp"

#include <algorithm>
#include <atomic>
#include <vector>

namespace frugal::detail {

namespace {

// 2^18 floats (1 MiB dense) at least: at top-k 1% a range's sparse message is about 14 KB,
// enough that the per-message costs (a header, a match, a few microseconds of the transport)
// stay near 1% of its transfer. At most 64 ranges: a 25.6 M-element buffer runs in 64 of 400 K,
// so the merge or encode of the last range, which nothing overlaps, is under 2% of the whole,
// and the requests and per-range vectors of one step stay few.
constexpr std::size_t kDefaultPipelineMinRange = std::size_t{1} << 18;
constexpr std::size_t kMaxPipelineRanges = 64;
std::atomic<std::size_t> pipeline_min_range{kDefaultPipelineMinRange};

}  // namespace

std::size_t pipeline_range_elements(std::size_t n) noexcept {
  const std::size_t least = pipeline_min_range.load(std::memory_order_relaxed);
  return std::max(least, (n + kMaxPipelineRanges - 1) / kMaxPipelineRanges);
}

void set_pipeline_min_range_elements_for_tests(std::size_t elements) noexcept {
  pipeline_min_range.store(elements == 0 ? kDefaultPipelineMinRange : elements,
                           std::memory_order_relaxed);
}

void CollectiveContext::wait_all(std::span<Request> requests) {
  std::vector<Request*> pointers;
  pointers.reserve(requests.size());
  for (Request& r : requests) pointers.push_back(&r);
  wait_all(std::span<Request* const>(pointers));
}

void CollectiveContext::wait_recv(Request& request, std::size_t expected_bytes) {
  wait(request);
  check_recv(request, expected_bytes);
}

void CollectiveContext::check_recv(const Request& request, std::size_t expected_bytes) const {
  const PendingOp* op = request.op();
  const int peer = op != nullptr ? op->peer : -1;
  if (request.bytes() != expected_bytes) {
    throw Error(ErrorCode::Mismatch, "rank " + std::to_string(rank()) + ": expected " +
                                         std::to_string(expected_bytes) + " bytes from peer " +
                                         std::to_string(peer) + " (tag " + std::to_string(tag_) +
                                         ") but received " + std::to_string(request.bytes()) +
                                         "; do all ranks pass the same count and options?");
  }
}

void CollectiveContext::progress(std::span<Request> requests) {
  for (Request& r : requests) {
    if (!r.done()) transport_.test(r);
  }
}

std::size_t CollectiveContext::wait_any(std::span<Request* const> pending) {
  for (std::size_t i = 0; i < pending.size(); ++i) {
    // test() even when done(): a failed operation may be complete and throw only there.
    if (transport_.test(*pending[i])) return i;
  }
  // Nothing is in yet: block in the transport's own wait, which keeps its engine progressing
  // while data flows and yields the core only when idle. A poll loop of tests here yielded on
  // every empty round and, on a loaded machine, lost the core while messages streamed in.
  wait(*pending.front());
  return 0;
}

void CollectiveContext::sendrecv(int to, std::span<const std::byte> out, int from,
                                 std::span<std::byte> in) {
  Request recv = irecv(from, in);
  Request send = isend(to, out);
  wait_recv(recv, in.size());
  wait(send);
}

}  // namespace frugal::detail
