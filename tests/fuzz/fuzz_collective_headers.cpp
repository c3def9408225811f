// libFuzzer target: the agreement block every collective starts with (a compressed allreduce's
// compression terms and NaN/Inf/out-of-range flags included), which a rank reads from whatever a
// disagreeing peer sent. Must end in Mismatch or a poisoned block, never an out-of-bounds read or
// undefined behaviour. (It once also covered the compressed allreduce's separate 48-byte header,
// which the agreement block replaced; the target keeps its name and corpus.)
#include <cstddef>
#include <cstdint>
#include <span>

#include "agreement.hpp"
#include "frugal/error.hpp"

using namespace frugal;

namespace {

void expect_mismatch_or_nothing(const detail::CollectiveAgreement& a) {
  if (const auto error = a.verdict(0); error && error->code() != ErrorCode::Mismatch) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  const bool intact = size == detail::CollectiveAgreement::kSize;
  // Merged into the block of every kind of collective (alltoallv sums its param), and adopted.
  for (int kind = 1; kind <= 8; ++kind) {
    detail::AgreementTerms terms;
    terms.kind = static_cast<detail::CollectiveKind>(kind);
    terms.count = 1000;
    detail::CollectiveAgreement merged(terms);
    merged.merge(bytes, intact);
    detail::CollectiveAgreement adopted(terms);
    adopted.adopt(bytes, intact);
    expect_mismatch_or_nothing(merged);
    expect_mismatch_or_nothing(adopted);
  }
  // A compressed allreduce's block: its param is the compression digest, and a differing one
  // builds the message from this rank's compression terms.
  detail::AgreementTerms terms;
  terms.kind = detail::CollectiveKind::Allreduce;
  terms.count = 1000;
  terms.algorithm = AllreduceAlgorithm::TwoPhase;
  terms.compression.method = static_cast<std::uint8_t>(compression::Method::Qsgd);
  terms.compression.bits = 4;
  terms.compression.bucket = 512;
  detail::CollectiveAgreement compressed(terms, false, true);
  compressed.merge(bytes, intact);
  expect_mismatch_or_nothing(compressed);
  return 0;
}
