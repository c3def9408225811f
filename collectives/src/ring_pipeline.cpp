#include "ring_pipeline.hpp"

#include <algorithm>

#include "../patterns/ring.hpp"
#include "reduce_kernels.hpp"

namespace frugal::detail {

namespace {

// Receives in flight per reduce step; each needs a scratch slot of one segment.
constexpr std::size_t kReceiveSlots = 4;

}  // namespace

std::vector<patterns::Range> balanced_blocks(std::size_t count, std::size_t element_size,
                                             int parts) {
  std::vector<patterns::Range> blocks(static_cast<std::size_t>(parts));
  for (int i = 0; i < parts; ++i) {
    const patterns::Range r = patterns::chunk_range(count, parts, i);
    blocks[static_cast<std::size_t>(i)] = {r.offset * element_size, r.count * element_size};
  }
  return blocks;
}

void run_ring(CollectiveContext& ctx, const RingPlan& plan) {
  using namespace patterns;
  const int size = ctx.size();
  const int rank = ctx.rank();
  if (size == 1 || plan.first_step >= plan.last_step) return;
  const int right = ring_right(rank, size);
  const int left = ring_left(rank, size);
  const int reduce_steps = ring_reduce_steps(size);
  const bool reduces = plan.first_step < reduce_steps;
  // Whole elements per segment, so that every segment can be reduced on its own; gather-only
  // runs move plain bytes.
  const std::size_t element = reduces ? size_of(plan.dtype) : 1;
  const std::size_t segment = std::max(element, ctx.segment_bytes() / element * element);

  auto block = [&](int b) { return plan.blocks[static_cast<std::size_t>(b)]; };
  auto segments = [&](int b) { return segment_count(block(b).count, segment); };
  auto piece = [&](int b, std::size_t j) {
    const Range s = segment_range(block(b), segment, j);
    return plan.buffer.subspan(s.offset, s.count);
  };

  std::size_t largest = 0;
  for (const Range& r : plan.blocks) largest = std::max(largest, r.count);
  const std::size_t slot_bytes = std::min(segment, largest);
  const auto slots = reduces ? scratch(slot_bytes * kReceiveSlots) : nullptr;

  const auto steps = static_cast<std::size_t>(plan.last_step - plan.first_step);
  std::vector<std::vector<Request>> sends(steps);
  auto post_send = [&](int step, std::size_t j) {
    const int b = ring_send_block(rank, size, step);
    sends[static_cast<std::size_t>(step - plan.first_step)].push_back(
        ctx.isend(right, piece(b, j)));
  };

  {
    const int b = ring_send_block(rank, size, plan.first_step);
    for (std::size_t j = 0; j < segments(b); ++j) post_send(plan.first_step, j);
  }

  std::vector<Request> recvs;
  for (int step = plan.first_step; step < plan.last_step; ++step) {
    const int b = ring_recv_block(rank, size, step);
    const std::size_t n = segments(b);
    // The block received now was sent at step `overwritten`, cut into the same segments: segment
    // j may be received into once its own send has completed, not only once the whole block's
    // have (which would stall the ring on the slowest segment of a whole step).
    const int overwritten = ring_overwrites_send_of_step(size, step);
    std::vector<Request>* pending =
        overwritten >= plan.first_step
            ? &sends[static_cast<std::size_t>(overwritten - plan.first_step)]
            : nullptr;
    const bool reduce = step < reduce_steps;
    const bool last_reduce = step == reduce_steps - 1;
    auto slot = [&](std::size_t j) {
      return std::span<std::byte>(slots.get() + (j % kReceiveSlots) * slot_bytes,
                                  piece(b, j).size());
    };
    auto post_recv = [&](std::size_t j) {
      recvs[j] = ctx.irecv(left, reduce ? slot(j) : piece(b, j));
    };

    recvs.clear();
    recvs.resize(n);
    const std::size_t initially = reduce ? std::min(n, kReceiveSlots) : n;
    std::size_t posted = 0;
    // Posts the receives up to `want` whose segments are free: all of them if `block`, else
    // those whose overwritten sends have already completed.
    auto post_up_to = [&](std::size_t want, bool block) {
      for (; posted < want; ++posted) {
        if (pending != nullptr) {
          Request& send = (*pending)[posted];
          if (block) {
            ctx.wait(send);
          } else if (!ctx.communicator().transport().test(send)) {
            return;
          }
        }
        post_recv(posted);
      }
    };
    post_up_to(initially, false);
    for (std::size_t j = 0; j < n; ++j) {
      post_up_to(j + 1, true);
      post_up_to(initially, false);
      ctx.wait_recv(recvs[j], piece(b, j).size());
      if (reduce) {
        reduce_sum(piece(b, j), slot(j), plan.dtype);
        if (last_reduce && plan.divisor > 1) divide(piece(b, j), plan.dtype, plan.divisor);
        if (j + kReceiveSlots < n) post_up_to(j + kReceiveSlots + 1, true);
      }
      if (step + 1 < plan.last_step) post_send(step + 1, j);
    }
  }
  for (auto& pending : sends) ctx.wait_all(std::span<Request>(pending));
}

}  // namespace frugal::detail
