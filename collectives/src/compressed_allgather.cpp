// Compressed allreduce by allgather: every rank sends its payload (top-k (index, value) pairs,
// or a whole quantized buffer) straight to every other rank (one round; the same bytes per rank
// as a ring allgather) and adds all P decoded payloads up locally, in rank order, so every rank
// holds the same sum. Each value is compressed once, by its own rank.
//
// Pipelined when the buffer has several pieces (segments of 1-bit, ternary or QSGD, each a
// payload of its own): consecutive pieces are grouped into batches of at least
// pipeline_range_elements (a batch closes once its pieces reach that many elements, so small
// tensors share one and a bucket of hundreds of biases does not become hundreds of messages per
// peer), and
// each batch is sent to every peer as soon as it is encoded, so that its transfer overlaps the
// encode of the next. The receiver decodes batch by batch, each batch's P payloads added in rank
// order: every element is summed in the same order as before, bit for bit. A batch travels as a
// message of its own on the collective's one tag; between two ranks messages of one tag match in
// the order sent, and both sides post theirs in batch order. A one-piece buffer (top-k over the
// whole bucket, a quantizer without segments) is one message, as its payload cannot be cut.
#include <algorithm>
#include <string>
#include <vector>

#include "../patterns/exchange.hpp"
#include "compressed_run.hpp"
#include "reduce_kernels.hpp"
#include "scratch_arena.hpp"

namespace frugal::detail {

namespace {

// Pieces [first, last) of the buffer and their bytes [at, at + bytes) in a rank's message area.
struct Batch {
  std::size_t first = 0;
  std::size_t last = 0;
  std::size_t at = 0;
  std::size_t bytes = 0;
};

std::vector<Batch> batches_of(std::span<const patterns::Range> pieces,
                              std::span<const std::size_t> piece_at, std::size_t n) {
  const std::size_t least = pipeline_range_elements(n);
  std::vector<Batch> batches;
  std::size_t first = 0, elements = 0;
  for (std::size_t i = 0; i < pieces.size(); ++i) {
    elements += pieces[i].count;
    if (elements >= least || i + 1 == pieces.size()) {
      batches.push_back({first, i + 1, piece_at[first], piece_at[i + 1] - piece_at[first]});
      first = i + 1;
      elements = 0;
    }
  }
  return batches;
}

// One payload per rank, one message to each peer: today's single message for a one-piece buffer.
void allgather_whole(CompressedRun& run, std::span<float> data) {
  CollectiveContext& ctx = run.ctx();
  const compression::Compressor& compressor = run.compressor();
  const auto ranks = static_cast<std::size_t>(ctx.size());
  const auto me = static_cast<std::size_t>(ctx.rank());
  // Sampled top-k varies in size: receive into the largest a payload can be (the decoder checks
  // each payload's header and length).
  const std::size_t max_message = compressor.max_encoded_bytes(data.size());
  const std::span<std::byte> buffers = scratch_bytes(ScratchSlot::Incoming, max_message * ranks);
  auto slot = [&](std::size_t q) { return buffers.subspan(q * max_message, max_message); };
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
  run.wait_all(e.sends);
}

}  // namespace

void compressed_allgather(CompressedRun& run, std::span<float> data) {
  CollectiveContext& ctx = run.ctx();
  const compression::Compressor& compressor = run.compressor();
  const int size = ctx.size();
  const int rank = ctx.rank();
  const auto ranks = static_cast<std::size_t>(size);
  const std::vector<patterns::Range> pieces = run.pieces({0, data.size()});
  if (pieces.size() == 1) {
    allgather_whole(run, data);
  } else {
    // The pieces' payloads, end to end, make a rank's message area; pieces have fixed sizes.
    std::vector<std::size_t> piece_at(pieces.size() + 1, 0);
    for (std::size_t i = 0; i < pieces.size(); ++i) {
      piece_at[i + 1] = piece_at[i] + *compressor.encoded_bytes(pieces[i].count);
    }
    const std::vector<Batch> batches = batches_of(pieces, piece_at, data.size());
    const std::size_t area = piece_at.back();
    const std::span<std::byte> buffers = scratch_bytes(ScratchSlot::Incoming, area * ranks);
    auto message = [&](std::size_t q, const Batch& b) {
      return buffers.subspan(q * area + b.at, b.bytes);
    };
    const auto me = static_cast<std::size_t>(rank);
    // recvs[b * ranks + q] and sends[b * ranks + q]: batch b from and to rank q, each peer's
    // posted in batch order.
    std::vector<Request> recvs(batches.size() * ranks);
    std::vector<Request> sends(batches.size() * ranks);
    for (int s = 1; s < size; ++s) {
      const auto q = static_cast<std::size_t>(patterns::exchange_recv_peer(rank, size, s));
      for (std::size_t b = 0; b < batches.size(); ++b) {
        recvs[b * ranks + q] = ctx.irecv(static_cast<int>(q), message(q, batches[b]));
      }
    }
    for (std::size_t b = 0; b < batches.size(); ++b) {
      const Batch& batch = batches[b];
      for (std::size_t i = batch.first; i < batch.last; ++i) {
        // data is zeroed below and takes the decoded sum.
        const std::size_t bytes = piece_at[i + 1] - piece_at[i];
        const std::size_t wrote =
            run.encode_worker(data.subspan(pieces[i].offset, pieces[i].count),
                              buffers.subspan(me * area + piece_at[i], bytes), pieces[i].offset,
                              CompressedRun::Leaves::Unspecified);
        // The peers expect the fixed size: anything else would send unwritten scratch.
        if (wrote != bytes) {
          throw Error(ErrorCode::Internal, "compressed allgather: segment " + std::to_string(i) +
                                               " encoded to " + std::to_string(wrote) +
                                               " bytes, not its fixed " + std::to_string(bytes));
        }
      }
      for (int s = 1; s < size; ++s) {
        const auto q = static_cast<std::size_t>(patterns::exchange_send_peer(rank, size, s));
        sends[b * ranks + q] = ctx.isend(static_cast<int>(q), message(me, batch));
      }
      // Keeps the earlier batches moving while this rank encodes the next.
      run.timed(run.stats().comm_seconds, [&] {
        ctx.progress(recvs);
        ctx.progress(sends);
      });
    }

    for (std::size_t b = 0; b < batches.size(); ++b) {
      const Batch& batch = batches[b];
      for (std::size_t i = batch.first; i < batch.last; ++i) {
        std::ranges::fill(data.subspan(pieces[i].offset, pieces[i].count), 0.0f);
      }
      for (std::size_t q = 0; q < ranks; ++q) {
        if (q != me) {
          // Fixed-size pieces: a message of any other length is refused (Mismatch: the peer
          // sent the wrong thing) before any of its pieces is decoded.
          run.wait_exact(recvs[b * ranks + q], batch.bytes);
        }
        run.timed(run.stats().decode_seconds, [&] {
          for (std::size_t i = batch.first; i < batch.last; ++i) {
            compressor.decode_add(
                buffers.subspan(q * area + piece_at[i], piece_at[i + 1] - piece_at[i]),
                data.subspan(pieces[i].offset, pieces[i].count));
          }
        });
      }
    }
    run.wait_all(sends);
  }
  if (run.options().op == ReduceOp::Average) {
    divide(std::as_writable_bytes(data), DType::Float32, size);
  }
}

}  // namespace frugal::detail
