// Compressed allreduce by allgather: every rank sends its payload (top-k (index, value) pairs,
// or a whole quantized buffer) straight to every other rank (one round; the same bytes per rank
// as a ring allgather) and adds all P decoded payloads up locally, in rank order, so every rank
// holds the same sum. Each value is compressed once, by its own rank.
#include <algorithm>
#include <string>
#include <vector>

#include "compressed_run.hpp"
#include "lazy_require.hpp"
#include "reduce_kernels.hpp"
#include "scratch_arena.hpp"

namespace frugal::detail {

void compressed_allgather(CompressedRun& run, std::span<float> data) {
  CollectiveContext& ctx = run.ctx();
  const compression::Compressor& compressor = run.compressor();
  const int size = ctx.size();
  const int rank = ctx.rank();
  const auto ranks = static_cast<std::size_t>(size);
  // The payloads of the buffer's pieces (one per segment for 1-bit, ternary and QSGD, so that
  // no scale covers two tensors; the whole buffer otherwise), end to end. Sampled top-k varies
  // in size: receive into the largest a payload can be (the decoder checks each payload's header
  // and length).
  const std::vector<patterns::Range> pieces = run.pieces({0, data.size()});
  std::vector<std::size_t> piece_at(pieces.size() + 1, 0);
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    piece_at[i + 1] =
        piece_at[i] + (pieces.size() == 1 ? compressor.max_encoded_bytes(data.size())
                                          : *compressor.encoded_bytes(pieces[i].count));
  }
  const std::size_t max_message = piece_at.back();

  const std::span<std::byte> buffers = scratch_bytes(ScratchSlot::Incoming, max_message * ranks);
  auto slot = [&](std::size_t q) { return buffers.subspan(q * max_message, max_message); };
  const auto me = static_cast<std::size_t>(rank);
  // data is zeroed below and takes the decoded sum.
  std::size_t mine = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    mine += run.encode_worker(data.subspan(pieces[i].offset, pieces[i].count),
                              slot(me).subspan(piece_at[i], piece_at[i + 1] - piece_at[i]),
                              pieces[i].offset, CompressedRun::Leaves::Unspecified);
  }
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
    run.timed(run.stats().decode_seconds, [&] {
      if (pieces.size() == 1) {
        compressor.decode_add(slot(q).first(bytes), data);
        return;
      }
      // Fixed-size pieces: a message of any other length is refused before any is decoded.
      require(bytes == max_message, "payload", [&] {
        return "rank " + std::to_string(q) + " sent " + std::to_string(bytes) +
               " bytes, the buffer's " + std::to_string(pieces.size()) + " segment payloads are " +
               std::to_string(max_message);
      });
      for (std::size_t i = 0; i < pieces.size(); ++i) {
        compressor.decode_add(slot(q).subspan(piece_at[i], piece_at[i + 1] - piece_at[i]),
                              data.subspan(pieces[i].offset, pieces[i].count));
      }
    });
  }
  if (run.options().op == ReduceOp::Average) {
    divide(std::as_writable_bytes(data), DType::Float32, size);
  }
  run.wait_all(e.sends);
}

}  // namespace frugal::detail
