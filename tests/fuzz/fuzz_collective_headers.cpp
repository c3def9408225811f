// libFuzzer target: the blocks ranks exchange before a collective's payload, the compressed
// allreduce's CollectiveHeader and the dense allreduce's agreement block, which a rank reads
// from whatever a disagreeing peer sent. Must end in Mismatch or a poisoned block, never an
// out-of-bounds read or undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <span>

#include "../../collectives/src/collective_header.hpp"
#include "../../collectives/src/dense_agreement.hpp"
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
  detail::DenseAgreement agreement(1000, DType::Float32, ReduceOp::Sum,
                                   AllreduceAlgorithm::RecursiveDoubling, NonFiniteAction::Default,
                                   false);
  agreement.merge(bytes, size == detail::DenseAgreement::kSize);
  try {
    agreement.check(0);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::Mismatch) __builtin_trap();
  }
  return 0;
}
