// The peer-failure drivers' parser of the workers' VICTIM / SURVIVOR / FINISHED lines.
#include "peer_failure_report.hpp"

#include <gtest/gtest.h>

namespace frugal::test {
namespace {

TEST(PeerFailureReport, ReadsEveryKindOfLineAmongOtherOutput) {
  const PeerFailureReport r = parse_peer_failure_output(
      "ENDPOINT rank=0 peer=1 tcp lanes:eth0\n"
      "VICTIM rank=1 killed_at=1234567890123\n"
      "[host:123] SURVIVOR rank=0 code=peer failure detected_at=1234567990123 iterations=42 "
      "what=allreduce: peer 1 is unreachable (code=5)\n"
      "SURVIVOR rank=2 code=timeout detected_at=1234568000000 iterations=7 what=recv from peer 1\n"
      "FINISHED rank=3 iterations=100");  // no final newline
  EXPECT_EQ(r.killed_at, 1234567890123);
  ASSERT_EQ(r.survivors.size(), 2u);
  EXPECT_EQ(r.survivors.at(0).code, "peer failure");
  EXPECT_EQ(r.survivors.at(0).detected_at, 1234567990123);
  EXPECT_EQ(r.survivors.at(0).what, "allreduce: peer 1 is unreachable (code=5)");
  EXPECT_EQ(r.survivors.at(2).code, "timeout");
  EXPECT_EQ(r.survivors.at(2).what, "recv from peer 1");
  EXPECT_EQ(r.finished, std::vector<int>{3});
}

TEST(PeerFailureReport, GarbledLinesCountAsMissing) {
  const PeerFailureReport r = parse_peer_failure_output(
      "VICTIM rank=1 killed_at=soon\n"
      "SURVIVOR rank=0 code=timeout detected_at=12x iterations=1 what=late\n"
      "SURVIVOR rank=2 code=timeout\n"
      "FINISHED rank=\n"
      "FINISHED rank=99999999999\n"                                               // not an int
      "SURVIVOR rank=4 code=timeout detected_at=99999999999999999999 what=x\n");  // overflows
  EXPECT_EQ(r.killed_at, -1);
  EXPECT_TRUE(r.survivors.empty());
  EXPECT_TRUE(r.finished.empty());
}

}  // namespace
}  // namespace frugal::test
