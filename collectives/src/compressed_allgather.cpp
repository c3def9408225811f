// Compressed allreduce by allgather: every rank sends its payload (top-k (index, value) pairs,
// or a whole quantized buffer) straight to every other rank (one round; the same bytes per rank
// as a ring allgather) and adds all P decoded payloads up locally, in rank order, so every rank
// holds the same sum. Each value is compressed once, by its own rank.
#include <algorithm>
#include <vector>

#include "compressed_run.hpp"
#include "reduce_kernels.hpp"
#include "scratch_arena.hpp"

namespace frugal::detail {

void compressed_allgather(CompressedRun& run, std::span<float> data) {
  CollectiveContext& ctx = run.ctx();
  const compression::Compressor& compressor = run.compressor();
  const int size = ctx.size();
  const int rank = ctx.rank();
  const auto ranks = static_cast<std::size_t>(size);
  // Sampled top-k varies in size: receive into the largest a payload can be (the decoder checks
  // each payload's header and length).
  const std::size_t max_message = compressor.max_encoded_bytes(data.size());

  const std::span<std::byte> buffers = scratch_bytes(ScratchSlot::Incoming, max_message * ranks);
  auto slot = [&](std::size_t q) { return buffers.subspan(q * max_message, max_message); };
  const auto me = static_cast<std::size_t>(rank);
  // data is zeroed below and takes the decoded sum.
  const std::size_t mine = run.encode_worker(data, slot(me), 0, CompressedRun::Leaves::Unspecified);
  CollectiveContext::Exchange e =
      ctx.post_exchange([&](int q) { return slot(static_cast<std::size_t>(q)); },
                        [&](int) { return slot(me).first(mine); });

  std::fill(data.begin(), data.end(), 0.0f);
  for (std::size_t q = 0; q < ranks; ++q) {
    std::size_t bytes = mine;
    if (q != me) {
      run.wait(e.recvs[q]);
      bytes = e.recvs[q].bytes();
    }
    run.timed(run.stats().decode_seconds,
              [&] { compressor.decode_add(slot(q).first(bytes), data); });
  }
  if (run.options().op == ReduceOp::Average) {
    divide(std::as_writable_bytes(data), DType::Float32, size);
  }
  run.wait_all(e.sends);
}

}  // namespace frugal::detail
