// libFuzzer target: the blocks ranks exchange before a collective's payload, the compressed
// allreduce's CollectiveHeader and the agreement block every collective starts with, which a rank
// reads from whatever a disagreeing peer sent. Must end in Mismatch or a poisoned block, never an
// out-of-bounds read or undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <span>

#include "../../collectives/src/agreement.hpp"
#include "../../collectives/src/collective_header.hpp"
#include "frugal/error.hpp"

using namespace frugal;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data), size);
  AllreduceOptions options;
  options.compression.method = compression::Method::Qsgd;
  const auto expected =
      detail::CollectiveHeader::describe(options, AllreduceAlgorithm::TwoPhase, 1000, 0);
  try {
    detail::CollectiveHeader::check(bytes, expected, 0, 1);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::Mismatch) __builtin_trap();
  }
  // Merged into the block of every kind of collective (alltoallv sums its param), and adopted.
  for (int kind = 1; kind <= 8; ++kind) {
    detail::AgreementTerms terms;
    terms.kind = static_cast<detail::CollectiveKind>(kind);
    terms.count = 1000;
    detail::CollectiveAgreement merged(terms);
    merged.merge(bytes, size == detail::CollectiveAgreement::kSize);
    detail::CollectiveAgreement adopted(terms);
    adopted.adopt(bytes, size == detail::CollectiveAgreement::kSize);
    for (const detail::CollectiveAgreement* a : {&merged, &adopted}) {
      if (const auto error = a->verdict(0); error && error->code() != ErrorCode::Mismatch) {
        __builtin_trap();
      }
    }
  }
  return 0;
}
