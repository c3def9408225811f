// Bad arguments on one process only: that rank throws InvalidArgument naming the parameter,
// every other rank a Mismatch naming that rank and its reason, at once (the communicator's
// timeout is long: a rank left waiting would report Timeout instead), and the communicator
// stays usable. And a state reused with gTop-k toggled is Mismatch on every process.
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <vector>

#include "compressed_cases.hpp"
#include "frugal/collectives/allreduce.hpp"
#include "test_communicator.hpp"

namespace frugal {
namespace {

// Far beyond how long these calls take.
constexpr std::chrono::milliseconds kLongTimeout{30'000};

struct Outcome {
  ErrorCode code = ErrorCode::Internal;
  bool threw = false;
  std::string message;
};

// Runs `call` on this process's rank and reports what it threw.
template <typename Call>
Outcome outcome(Call&& call) {
  Outcome o;
  try {
    call();
  } catch (const Error& e) {
    o.threw = true;
    o.code = e.code();
    o.message = e.what();
  }
  return o;
}

// This rank's share of "the bad rank throws InvalidArgument naming `parameter`, every other
// rank Mismatch naming the bad rank and its reason", then the communicator still reduces.
void expect_refused(Communicator& comm, const Outcome& o, int bad_rank,
                    const std::string& parameter_and_reason) {
  SCOPED_TRACE("rank " + std::to_string(comm.rank()) + ": " + o.message);
  ASSERT_TRUE(o.threw);
  if (comm.rank() == bad_rank) {
    EXPECT_EQ(o.code, ErrorCode::InvalidArgument);
    EXPECT_NE(o.message.find("invalid argument: " + parameter_and_reason), std::string::npos);
  } else {
    EXPECT_EQ(o.code, ErrorCode::Mismatch);
    EXPECT_NE(o.message.find("rank " + std::to_string(bad_rank) + ": " + parameter_and_reason),
              std::string::npos);
  }
  std::vector<float> x(10, 1.0f);
  allreduce(comm, std::span<float>(x));
  EXPECT_EQ(x[0], static_cast<float>(comm.size()));
}

TEST(MpiOneRankRefuses, ABadDensityFailsEveryRankNamingIt) {
  auto c = testing::make_test_communicator({.timeout = kLongTimeout});
  const int bad = c->size() - 1;
  for (const AllreduceAlgorithm a :
       {AllreduceAlgorithm::SparseAllgather, AllreduceAlgorithm::SparseRecursiveDoubling}) {
    SCOPED_TRACE(std::string(to_string(a)));
    AllreduceState state;
    AllreduceOptions o;
    o.compression.method = compression::Method::TopK;
    o.compression.density = c->rank() == bad ? 0.0 : 0.01;
    o.algorithm = a;
    o.state = &state;
    std::vector<float> x = testing::case_input(c->rank(), 0, 4000);
    const Outcome got = outcome([&] { allreduce(*c, std::span<float>(x), o); });
    expect_refused(*c, got, bad, "density: must be in (0, 1]");
  }
}

TEST(MpiOneRankRefuses, BadSegmentsFailEveryRankNamingThem) {
  auto c = testing::make_test_communicator({.timeout = kLongTimeout});
  AllreduceOptions o;
  o.compression.method = compression::Method::OneBit;
  o.error_feedback = false;
  const std::vector<std::size_t> good = {1000, 3096}, bad = {1000, 3000};
  o.segments = c->rank() == 0 ? bad : good;
  std::vector<float> x = testing::case_input(c->rank(), 0, 4096);
  const Outcome got = outcome([&] { allreduce(*c, std::span<float>(x), o); });
  expect_refused(*c, got, 0, "segments: ");
}

// Top-2% with gTop-k over the sparse recursive doubling, keeping its residual in `state`.
AllreduceOptions gtopk_options(AllreduceState& state) {
  AllreduceOptions o;
  o.compression.method = compression::Method::TopK;
  o.compression.density = 0.02;
  o.compression.gtopk = true;
  o.algorithm = AllreduceAlgorithm::SparseRecursiveDoubling;
  o.state = &state;
  return o;
}

// A gTop-k residual also holds what the cuts of the sum gave back: not reusable without them.
TEST(MpiGtopkLayout, TogglingGtopkOnABoundStateIsMismatchOnEveryRank) {
  auto c = testing::make_test_communicator({.timeout = kLongTimeout});
  AllreduceState state;
  AllreduceOptions o = gtopk_options(state);
  std::vector<float> x = testing::case_input(c->rank(), 0, 4000);
  allreduce(*c, std::span<float>(x), o);
  o.compression.gtopk = false;
  const Outcome got = outcome([&] { allreduce(*c, std::span<float>(x), o); });
  ASSERT_TRUE(got.threw);
  EXPECT_EQ(got.code, ErrorCode::Mismatch) << got.message;
  EXPECT_NE(got.message.find("gtopk on -> off"), std::string::npos) << got.message;
  state.reset();
  allreduce(*c, std::span<float>(x), o);
  EXPECT_EQ(state.steps(), 2U);
}

// An image of version 3 (no gtopk in its layout) of a gTop-k state restores on every process
// and continues exactly as the state that never left; the first call supplies gtopk.
TEST(MpiGtopkLayout, AVersionThreeImageRestoresAndContinuesExactly) {
  auto c = testing::make_test_communicator({.timeout = kLongTimeout});
  AllreduceState state;
  AllreduceOptions o = gtopk_options(state);
  std::vector<float> x = testing::case_input(c->rank(), 0, 4000);
  allreduce(*c, std::span<float>(x), o);
  std::vector<std::byte> v3 = state.save();
  ASSERT_EQ(static_cast<int>(v3[4]), 4);
  v3[4] = std::byte{3};
  v3.erase(v3.begin() + 54, v3.begin() + 56);  // version 4's gtopk flag bytes
  AllreduceState old;
  old.restore(v3);
  std::vector<float> y = testing::case_input(c->rank(), 1, 4000), z = y;
  allreduce(*c, std::span<float>(y), o);
  o.state = &old;
  allreduce(*c, std::span<float>(z), o);
  EXPECT_EQ(y, z);
  o.compression.gtopk = false;
  const Outcome got = outcome([&] { allreduce(*c, std::span<float>(z), o); });
  EXPECT_EQ(got.code, ErrorCode::Mismatch) << got.message;
  EXPECT_NE(got.message.find("gtopk on -> off"), std::string::npos) << got.message;
}

}  // namespace
}  // namespace frugal
