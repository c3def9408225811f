// The two phases of the two-phase compressed allreduce, shared by compressed_two_phase (the
// allreduce), compressed_reduce_scatter and compressed_allgather, so that the halves and the
// whole cannot drift apart.
#pragma once

#include <cstddef>
#include <span>
#include <vector>

#include "../patterns/chunking.hpp"
#include "compressed_run.hpp"

namespace frugal::detail {

// Where every payload of the two phases sits. Message c carries chunk c (the even P-way split
// of the buffer, patterns::chunk_range) as the payloads of its pieces: the chunk cut at segment
// boundaries for methods with shared scales. All quantizers have a payload size fixed by the
// element count, so every rank computes the same layout without exchanging sizes.
class TwoPhaseLayout {
 public:
  struct Piece {
    patterns::Range range;  // elements of the buffer
    std::size_t at = 0;     // the payload's first byte in its message
    std::size_t bytes = 0;
  };

  TwoPhaseLayout(const CompressedRun& run, std::size_t count, int ranks);

  patterns::Range chunk(std::size_t c) const noexcept { return chunks_[c]; }
  const std::vector<Piece>& pieces(std::size_t c) const noexcept { return pieces_[c]; }
  std::size_t message_bytes(std::size_t c) const noexcept {
    return message_at_[c + 1] - message_at_[c];
  }
  std::size_t total_bytes() const noexcept { return message_at_.back(); }
  // Message c within a buffer of total_bytes() holding every message in chunk order.
  std::span<std::byte> message(std::span<std::byte> buffer, std::size_t c) const noexcept {
    return buffer.subspan(message_at_[c], message_bytes(c));
  }

 private:
  std::vector<patterns::Range> chunks_;
  std::vector<std::vector<Piece>> pieces_;
  std::vector<std::size_t> message_at_;
};

// Phase one, the compressed reduce-scatter: encodes every chunk of `data` (worker-side error
// feedback; `data` is left unspecified), sends chunk c to rank c as soon as it is encoded (this
// rank's own last) and leaves the sum (or mean) of this rank's chunk over all ranks in `sum`
// (chunk(rank).count elements; may be data's own chunk).
void two_phase_scatter(CompressedRun& run, const TwoPhaseLayout& layout, std::span<float> data,
                       std::span<float> sum);

// Phase two, the compressed allgather: re-encodes `own` (this rank's chunk, server-side error
// feedback), sends it to every rank and decodes every rank's chunk into `data`, this rank's
// included, so that all ranks hold identical results (the peers' in the order they arrive; each
// chunk's decode writes its own elements only). `own` may be data's own chunk. An owner
// whose chunk cannot be encoded (beyond the format's range) sends a marker: every rank then
// throws, or under NonFiniteAction::Skip fills that piece with +Inf.
void two_phase_gather(CompressedRun& run, const TwoPhaseLayout& layout, std::span<const float> own,
                      std::span<float> data);

}  // namespace frugal::detail
