#include "compressed_phases.hpp"

#include <algorithm>
#include <limits>
#include <optional>
#include <utility>

#include "../patterns/exchange.hpp"
#include "scratch_arena.hpp"

namespace frugal::detail {

TwoPhaseLayout::TwoPhaseLayout(const CompressedRun& run, std::size_t count, int ranks)
    : chunks_(static_cast<std::size_t>(ranks)),
      pieces_(static_cast<std::size_t>(ranks)),
      message_at_(static_cast<std::size_t>(ranks) + 1, 0) {
  // The chunks stay the even P-way split whatever the tensor sizes, which keeps every owner's
  // share of the work and of the wire equal; only the payloads are cut at segment boundaries,
  // so that no scale covers two tensors.
  for (std::size_t c = 0; c < chunks_.size(); ++c) {
    chunks_[c] = patterns::chunk_range(count, ranks, static_cast<int>(c));
    std::size_t at = 0;
    for (const patterns::Range r : run.pieces(chunks_[c])) {
      const std::size_t bytes = *run.compressor().encoded_bytes(r.count);
      pieces_[c].push_back({r, at, bytes});
      at += bytes;
    }
    message_at_[c + 1] = message_at_[c] + at;
  }
}

namespace {

std::span<std::byte> payload(std::span<std::byte> message, const TwoPhaseLayout::Piece& p) {
  return message.subspan(p.at, p.bytes);
}

}  // namespace

void two_phase_scatter(CompressedRun& run, const TwoPhaseLayout& layout, std::span<float> data,
                       std::span<float> sum) {
  using patterns::Range;
  CollectiveContext& ctx = run.ctx();
  const auto ranks = static_cast<std::size_t>(ctx.size());
  const auto me = static_cast<std::size_t>(ctx.rank());
  auto values = [&](Range r) { return data.subspan(r.offset, r.count); };

  const std::span<std::byte> outgoing = scratch_bytes(ScratchSlot::Outgoing, layout.total_bytes());
  const std::size_t mine_bytes = layout.message_bytes(me);
  const std::span<std::byte> incoming = scratch_bytes(ScratchSlot::Incoming, mine_bytes * ranks);
  auto from = [&](std::size_t q) {
    return q == me ? layout.message(outgoing, me) : incoming.subspan(q * mine_bytes, mine_bytes);
  };
  // Receives first; then chunk c is encoded (worker-side error feedback) and sent to rank c at
  // once, in the exchange's send order with this rank's own chunk last, so that the wire starts
  // after one chunk's encode instead of all P and every later encode overlaps earlier sends.
  // Each piece's encode depends on its own elements, residual and random stream alone
  // (keyed by offset), so the order changes no bit of any payload.
  CollectiveContext::Exchange scatter =
      ctx.post_receives([&](int q) { return from(static_cast<std::size_t>(q)); });
  auto encode = [&](std::size_t c) {
    for (const TwoPhaseLayout::Piece& p : layout.pieces(c)) {
      // Nobody reads the chunk again: the caller overwrites it or leaves it unspecified.
      run.encode_worker(values(p.range), payload(layout.message(outgoing, c), p), p.range.offset,
                        CompressedRun::Leaves::Unspecified);
      run.progress(scatter);
    }
  };
  for (int s = 1; s < ctx.size(); ++s) {
    const auto c =
        static_cast<std::size_t>(patterns::exchange_send_peer(ctx.rank(), ctx.size(), s));
    encode(c);
    scatter.sends[c] = ctx.isend(static_cast<int>(c), layout.message(outgoing, c));
  }
  encode(me);

  // Sum this rank's chunk over all ranks, in rank order so every owner adds the same way. One
  // pass over the sum once every payload is in (decode_sum) beats decoding each as it arrives,
  // which reads and writes the sum once per rank: the step is bound by memory traffic, not by
  // waiting (docs/performance.md, "Compressed allreduce: CPU per step").
  const Range own = layout.chunk(me);
  auto own_part = [&](Range r) { return sum.subspan(r.offset - own.offset, r.count); };
  for (std::size_t q = 0; q < ranks; ++q) {
    if (q != me) run.wait_exact(scatter.recvs[q], mine_bytes);
  }
  // Average: divided block by block as it is summed (x / P, as divide() computes it).
  const float divisor =
      run.options().op == ReduceOp::Average ? static_cast<float>(ctx.size()) : 1.0f;
  std::vector<std::span<const std::byte>> sources(ranks);
  for (const TwoPhaseLayout::Piece& p : layout.pieces(me)) {
    for (std::size_t q = 0; q < ranks; ++q) sources[q] = payload(from(q), p);
    run.timed(run.stats().decode_seconds,
              [&] { run.compressor().decode_sum(sources, own_part(p.range), divisor); });
  }
  run.wait_all(scatter.sends);
}

void two_phase_gather(CompressedRun& run, const TwoPhaseLayout& layout, std::span<const float> own,
                      std::span<float> data) {
  using patterns::Range;
  CollectiveContext& ctx = run.ctx();
  const auto me = static_cast<std::size_t>(ctx.rank());
  auto values = [&](Range r) { return data.subspan(r.offset, r.count); };

  // Re-encode the chunk (server-side error feedback) and send it to everyone.
  const Range chunk = layout.chunk(me);
  const std::span<std::byte> gathered = scratch_bytes(ScratchSlot::Gathered, layout.total_bytes());
  for (const TwoPhaseLayout::Piece& p : layout.pieces(me)) {
    run.encode_server(own.subspan(p.range.offset - chunk.offset, p.range.count),
                      payload(layout.message(gathered, me), p), p.range.offset,
                      p.range.offset - chunk.offset);
  }
  CollectiveContext::Exchange gather = ctx.post_exchange(
      [&](int q) { return layout.message(gathered, static_cast<std::size_t>(q)); },
      [&](int) { return layout.message(gathered, me); });
  // Every rank, the owner included, takes the decoded payload, so all hold identical results.
  // An owner whose chunk left the format sent a marker instead: every rank sees it after the
  // whole exchange, so no peer is left waiting. Under Error every rank throws (naming the
  // lowest such owner, whatever the arrival order); under Skip the piece becomes +Inf on every
  // rank, the overflow to Inf that Skip documents for one call, which GradientBuckets turns
  // into a skip of the whole step (it restores its states).
  const bool overflow_to_inf = run.options().non_finite == NonFiniteAction::Skip;
  std::optional<std::pair<std::size_t, Range>> overflowed;
  auto decode = [&](std::size_t q) {
    for (const TwoPhaseLayout::Piece& p : layout.pieces(q)) {
      const std::span<std::byte> bytes = payload(layout.message(gathered, q), p);
      if (run.is_overflow_marker(bytes)) {
        if (!overflowed || q < overflowed->first) overflowed.emplace(q, p.range);
        if (overflow_to_inf) {
          std::ranges::fill(values(p.range), std::numeric_limits<float>::infinity());
        }
        continue;
      }
      run.timed(run.stats().decode_seconds,
                [&] { run.compressor().decode(bytes, values(p.range)); });
    }
  };
  // Each chunk is decoded into its own elements alone, so the order is free: this rank's own
  // first (it overlaps the transfers), then the peers' as they arrive, each decode overlapping
  // the rest of the transfer. `pending` follows the exchange's receive order, the order the
  // peers' sends are posted in, which wait_any falls back on.
  decode(me);
  std::vector<std::size_t> peers;
  std::vector<Request*> pending;
  std::vector<std::size_t> expected;
  for (int s = 1; s < ctx.size(); ++s) {
    const auto q =
        static_cast<std::size_t>(patterns::exchange_recv_peer(ctx.rank(), ctx.size(), s));
    peers.push_back(q);
    pending.push_back(&gather.recvs[q]);
    expected.push_back(layout.message_bytes(q));
  }
  while (!pending.empty()) {
    const std::size_t i = run.wait_any_exact(pending, expected);
    const std::size_t q = peers[i];
    peers.erase(peers.begin() + static_cast<std::ptrdiff_t>(i));
    pending.erase(pending.begin() + static_cast<std::ptrdiff_t>(i));
    expected.erase(expected.begin() + static_cast<std::ptrdiff_t>(i));
    decode(q);
  }
  run.wait_all(gather.sends);
  if (overflowed && !overflow_to_inf) {
    const Range r = overflowed->second;
    run.throw_sum_overflow(static_cast<int>(overflowed->first), r.offset, r.end());
  }
}

}  // namespace frugal::detail
