#include "refusal.hpp"

#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "frugal/collectives/collectives.hpp"

namespace frugal::detail {

namespace {

// One rank's slot: 0, or 1 + its ErrorCode, then its message (cut to fit, NUL-padded). Fixed
// size, so the allgather's own agreement holds whatever the messages are.
constexpr std::size_t kSlotBytes = 256;

}  // namespace

AgreedError refusals(CollectiveContext& ctx, const Error* own) {
  std::array<std::byte, kSlotBytes> mine{};
  if (own != nullptr) {
    mine[0] = std::byte(1 + static_cast<int>(own->code()));
    // what() starts "frugal: <code>: "; the code travels in the first byte.
    std::string_view message = own->what();
    const std::string prefix = "frugal: " + std::string(to_string(own->code())) + ": ";
    if (message.starts_with(prefix)) message.remove_prefix(prefix.size());
    const std::size_t n = std::min(message.size(), kSlotBytes - 1);
    std::memcpy(mine.data() + 1, message.data(), n);
  }
  const auto ranks = static_cast<std::size_t>(ctx.size());
  std::vector<std::byte> all(kSlotBytes * ranks);
  CollectiveOptions options;
  options.timeout = ctx.timeout();
  allgather(ctx.communicator(), mine, all, options);
  std::string text;
  for (std::size_t r = 0; r < ranks; ++r) {
    const std::byte* slot = all.data() + r * kSlotBytes;
    const auto code = std::to_integer<int>(slot[0]);
    if (code == 0) continue;
    const char* chars = reinterpret_cast<const char*>(slot + 1);
    const std::string message(chars, std::find(chars, chars + kSlotBytes - 1, '\0'));
    const auto kind = static_cast<ErrorCode>(code - 1);  // "unknown" if out of range
    text += (text.empty() ? "" : "; ") + std::string("rank ") + std::to_string(r) + ": " + message +
            " (" + std::string(to_string(kind)) + " there)";
  }
  // A refused flag with no slot set would be a corrupted block: say so rather than nothing.
  if (text.empty()) text = "a rank refused its arguments but sent no reason";
  return AgreedError(ErrorCode::Mismatch,
                     "rank " + std::to_string(ctx.rank()) +
                         ": another rank refused its arguments, so nothing was sent or reduced; " +
                         text);
}

void refuse(Communicator& comm, const CollectiveOptions& options, const AgreementTerms& terms,
            const Error& error) {
  if (comm.size() > 1) {
    // The refused argument may be the timeout itself: the peers' own then bounds the exchange.
    CollectiveOptions usable = options;
    if (usable.timeout && usable.timeout->count() <= 0) usable.timeout.reset();
    try {
      run_collective(comm, usable, [&](CollectiveContext& ctx) {
        CollectiveAgreement agreement(terms);
        agreement.refuse();
        agree_recursive_doubling(ctx, agreement, {}, DType::Float32, 1);
        refusals(ctx, &error);
      });
    } catch (const Error&) {
      // The exchange itself broke (a peer gone, a timeout): this rank's own error says more.
    }
  }
  throw error;
}

}  // namespace frugal::detail
