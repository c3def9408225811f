// Two-phase compressed allreduce (DeepSpeed's compressed_allreduce, generalised to every
// quantizer): each rank encodes its buffer in P chunks with worker-side error feedback and sends
// chunk c to rank c; rank c decodes and sums its chunk from everyone, re-encodes the sum with
// server-side error feedback and sends it to every rank; everyone decodes every chunk. Each rank
// sends about 2 (P-1)/P of the compressed buffer, like a ring allreduce of compressed data.
#include <algorithm>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "../patterns/chunking.hpp"
#include "compressed_run.hpp"
#include "scratch_arena.hpp"

namespace frugal::detail {

void compressed_two_phase(CompressedRun& run, std::span<float> data) {
  using patterns::Range;
  CollectiveContext& ctx = run.ctx();
  const compression::Compressor& compressor = run.compressor();
  const int size = ctx.size();
  const int rank = ctx.rank();
  const auto ranks = static_cast<std::size_t>(size);

  // Message c carries chunk c as the payloads of its pieces (the chunk cut at segment
  // boundaries, so that no scale covers two tensors; the chunks themselves stay the even P-way
  // split, which keeps every owner's share of the work and of the wire equal whatever the
  // tensor sizes). All quantizers have a payload size fixed by the element count.
  struct Piece {
    Range range;         // elements of the buffer
    std::size_t at = 0;  // the payload's first byte in its message
    std::size_t bytes = 0;
  };
  std::vector<Range> chunks(ranks);
  std::vector<std::vector<Piece>> pieces(ranks);
  std::vector<std::size_t> message_at(ranks + 1, 0);
  for (std::size_t c = 0; c < ranks; ++c) {
    chunks[c] = patterns::chunk_range(data.size(), size, static_cast<int>(c));
    std::size_t at = 0;
    for (const Range r : run.pieces(chunks[c])) {
      const std::size_t bytes = *compressor.encoded_bytes(r.count);
      pieces[c].push_back({r, at, bytes});
      at += bytes;
    }
    message_at[c + 1] = message_at[c] + at;
  }
  auto message = [&](std::span<std::byte> buffer, std::size_t c) {
    return buffer.subspan(message_at[c], message_at[c + 1] - message_at[c]);
  };
  auto payload = [](std::span<std::byte> message, const Piece& p) {
    return message.subspan(p.at, p.bytes);
  };
  auto values = [&](Range r) { return data.subspan(r.offset, r.count); };

  // Phase 1: encode every chunk (worker-side error feedback) and send chunk c to rank c.
  const std::span<std::byte> outgoing = scratch_bytes(ScratchSlot::Outgoing, message_at[ranks]);
  for (std::size_t c = 0; c < ranks; ++c) {
    for (const Piece& p : pieces[c]) {
      // Nobody reads the chunk again before the gather overwrites it with the decoded result.
      run.encode_worker(values(p.range), payload(message(outgoing, c), p), p.range.offset,
                        CompressedRun::Leaves::Unspecified);
    }
  }
  const auto me = static_cast<std::size_t>(rank);
  const std::size_t mine_bytes = message_at[me + 1] - message_at[me];
  const std::span<std::byte> incoming = scratch_bytes(ScratchSlot::Incoming, mine_bytes * ranks);
  auto from = [&](std::size_t q) {
    return q == me ? message(outgoing, me) : incoming.subspan(q * mine_bytes, mine_bytes);
  };
  CollectiveContext::Exchange scatter =
      ctx.post_exchange([&](int q) { return from(static_cast<std::size_t>(q)); },
                        [&](int c) { return message(outgoing, static_cast<std::size_t>(c)); });

  // Sum this rank's chunk over all ranks, in rank order so every owner adds the same way. One
  // pass over the sum once every payload is in (decode_sum) beats decoding each as it arrives,
  // which reads and writes the sum once per rank: the step is bound by memory traffic, not by
  // waiting (docs/performance.md, "Compressed allreduce: CPU per step").
  const Range own = chunks[me];
  const std::span<float> sum = scratch_of<float>(ScratchSlot::Sum, own.count);
  auto own_part = [&](Range r) { return sum.subspan(r.offset - own.offset, r.count); };
  for (std::size_t q = 0; q < ranks; ++q) {
    if (q != me) run.wait_exact(scatter.recvs[q], mine_bytes);
  }
  // Average: divided block by block as it is summed (x / P, as divide() computes it).
  const float divisor = run.options().op == ReduceOp::Average ? static_cast<float>(size) : 1.0f;
  std::vector<std::span<const std::byte>> sources(ranks);
  for (const Piece& p : pieces[me]) {
    for (std::size_t q = 0; q < ranks; ++q) sources[q] = payload(from(q), p);
    run.timed(run.stats().decode_seconds,
              [&] { compressor.decode_sum(sources, own_part(p.range), divisor); });
  }
  run.wait_all(scatter.sends);

  // Phase 2: re-encode the chunk (server-side error feedback) and send it to everyone.
  const std::span<std::byte> gathered = scratch_bytes(ScratchSlot::Gathered, message_at[ranks]);
  for (const Piece& p : pieces[me]) {
    run.encode_server(own_part(p.range), payload(message(gathered, me), p), p.range.offset,
                      p.range.offset - own.offset);
  }
  CollectiveContext::Exchange gather =
      ctx.post_exchange([&](int q) { return message(gathered, static_cast<std::size_t>(q)); },
                        [&](int) { return message(gathered, me); });
  // Every rank, the owner included, takes the decoded payload, so all hold identical results.
  // An owner whose sum left the format sent a marker instead: every rank sees it after the
  // whole exchange, so no peer is left waiting. Under Error every rank throws; under Skip the
  // piece becomes +Inf on every rank, the overflow to Inf that Skip documents for one call,
  // which GradientBuckets turns into a skip of the whole step (it restores its states).
  const bool overflow_to_inf = run.options().non_finite == NonFiniteAction::Skip;
  std::optional<std::pair<std::size_t, Range>> overflowed;
  for (std::size_t q = 0; q < ranks; ++q) {
    if (q != me) run.wait_exact(gather.recvs[q], message(gathered, q).size());
    for (const Piece& p : pieces[q]) {
      const std::span<std::byte> bytes = payload(message(gathered, q), p);
      if (run.is_overflow_marker(bytes)) {
        if (!overflowed) overflowed.emplace(q, p.range);
        if (overflow_to_inf) {
          std::ranges::fill(values(p.range), std::numeric_limits<float>::infinity());
        }
        continue;
      }
      run.timed(run.stats().decode_seconds, [&] { compressor.decode(bytes, values(p.range)); });
    }
  }
  run.wait_all(gather.sends);
  if (overflowed && !overflow_to_inf) {
    const Range r = overflowed->second;
    run.throw_sum_overflow(static_cast<int>(overflowed->first), r.offset, r.end());
  }
}

}  // namespace frugal::detail
