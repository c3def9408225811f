#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "frugal/communicator.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"

namespace frugal {
namespace {

using namespace std::chrono_literals;

std::span<std::byte> bytes_of(std::vector<int>& v) {
  return std::as_writable_bytes(std::span(v));
}

Deadline soon(std::chrono::milliseconds d = 2000ms) {
  return Clock::now() + d;
}

TEST(Error, CarriesCodeAndNamesIt) {
  const Error e(ErrorCode::Timeout, "rank 1: recv from peer 0 tag 0x3");
  EXPECT_EQ(e.code(), ErrorCode::Timeout);
  EXPECT_NE(std::string(e.what()).find("timeout"), std::string::npos);
  EXPECT_NE(std::string(e.what()).find("peer 0"), std::string::npos);
  try {
    require(false, "segment_bytes", "must be positive");
    FAIL() << "require did not throw";
  } catch (const Error& err) {
    EXPECT_EQ(err.code(), ErrorCode::InvalidArgument);
    EXPECT_NE(std::string(err.what()).find("segment_bytes"), std::string::npos);
  }
}

TEST(Loopback, LargeSendIsRendezvousAndReceiveReportsSize) {
  LoopbackGroup g = make_loopback_group(2);
  std::vector<int> out(3000);
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<int>(i) - 7;
  std::vector<int> in(3005, 0);
  Request s = g.transports[0]->isend(1, 7, bytes_of(out));
  EXPECT_FALSE(s.done());  // rendezvous: nothing has received it yet
  Request r = g.transports[1]->irecv(0, 7, bytes_of(in));
  g.transports[1]->wait(r, soon());
  g.transports[0]->wait(s, soon());
  EXPECT_EQ(r.bytes(), out.size() * sizeof(int));
  EXPECT_TRUE(std::equal(out.begin(), out.end(), in.begin()));
  EXPECT_EQ(in[3000], 0);
}

TEST(Loopback, SmallSendIsEagerAndOutlivesItsRequest) {
  LoopbackGroup g = make_loopback_group(2);
  {
    std::vector<int> out{1, 2, 3};
    Request s = g.transports[0]->isend(1, 7, bytes_of(out));
    EXPECT_TRUE(s.done());  // copied: complete before anyone receives it
  }                         // request and buffer gone; the message must still arrive
  std::vector<int> in(5, 0);
  Request r = g.transports[1]->irecv(0, 7, bytes_of(in));
  g.transports[1]->wait(r, soon());
  EXPECT_EQ(r.bytes(), 3 * sizeof(int));
  EXPECT_EQ(in, (std::vector<int>{1, 2, 3, 0, 0}));
}

TEST(Loopback, SameTagIsFifoAndTagsMatchIndependently) {
  LoopbackGroup g = make_loopback_group(2);
  std::vector<int> a{1}, b{2}, c{3};
  Request s1 = g.transports[0]->isend(1, 5, bytes_of(a));
  Request s2 = g.transports[0]->isend(1, 5, bytes_of(b));
  Request s3 = g.transports[0]->isend(1, 9, bytes_of(c));
  std::vector<int> x(1), y(1), z(1);
  Request r3 = g.transports[1]->irecv(0, 9, bytes_of(z));
  Request r1 = g.transports[1]->irecv(0, 5, bytes_of(x));
  Request r2 = g.transports[1]->irecv(0, 5, bytes_of(y));
  std::array<Request*, 3> all{&r1, &r2, &r3};
  g.transports[1]->wait_all(all, soon());
  EXPECT_EQ(x[0], 1);
  EXPECT_EQ(y[0], 2);
  EXPECT_EQ(z[0], 3);
}

TEST(Loopback, MessageLargerThanBufferIsMismatch) {
  LoopbackGroup g = make_loopback_group(2);
  std::vector<int> out{1, 2, 3};
  std::vector<int> in(2);
  Request s = g.transports[0]->isend(1, 1, bytes_of(out));
  Request r = g.transports[1]->irecv(0, 1, bytes_of(in));
  try {
    g.transports[1]->wait(r, soon());
    FAIL() << "truncation not reported";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Mismatch);
    EXPECT_NE(std::string(e.what()).find("peer 0"), std::string::npos);
  }
}

TEST(Loopback, TimeoutNamesRankPeerAndTag) {
  LoopbackGroup g = make_loopback_group(2);
  std::vector<int> in(1);
  Request r = g.transports[1]->irecv(0, 0x2a, bytes_of(in));
  const auto start = Clock::now();
  try {
    g.transports[1]->wait(r, Clock::now() + 50ms);
    FAIL() << "no timeout";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::Timeout);
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 1"), std::string::npos) << what;
    EXPECT_NE(what.find("peer 0"), std::string::npos) << what;
    EXPECT_NE(what.find("0x2a"), std::string::npos) << what;
  }
  EXPECT_GE(Clock::now() - start, 50ms);
}

TEST(Loopback, FailedPeerGivesPeerFailureToWaitersAndNewOps) {
  LoopbackGroup g = make_loopback_group(3);
  std::vector<int> in(1);
  Request r = g.transports[1]->irecv(0, 1, bytes_of(in));
  std::thread killer([&] {
    std::this_thread::sleep_for(20ms);
    loopback_fail_rank(*g.fabric, 0);
  });
  try {
    g.transports[1]->wait(r, soon(5000ms));
    FAIL() << "no peer failure";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::PeerFailure);
    EXPECT_NE(std::string(e.what()).find("peer 0"), std::string::npos);
  }
  killer.join();
  Request s = g.transports[2]->isend(0, 1, bytes_of(in));
  EXPECT_THROW(g.transports[2]->wait(s, soon()), Error);
}

// A closed transport (its rank finished or gave up) is not a crash: what it sent eagerly still
// arrives, as with MPI and UCX, whose eager sends complete once the data has left the sender;
// after that, receives from it and sends to it fail with PeerFailure.
TEST(Loopback, AClosedTransportsEagerSendsStillArrive) {
  LoopbackGroup g = make_loopback_group(2);
  std::vector<int> out{4, 5};
  {
    Request s = g.transports[0]->isend(1, 3, bytes_of(out));
    EXPECT_TRUE(s.done());
  }
  g.transports[0].reset();  // rank 0 closes its transport
  std::vector<int> in(2, 0);
  Request r = g.transports[1]->irecv(0, 3, bytes_of(in));
  g.transports[1]->wait(r, soon());
  EXPECT_EQ(in, out);
  Request again = g.transports[1]->irecv(0, 3, bytes_of(in));
  EXPECT_THROW(g.transports[1]->wait(again, soon()), Error);
  Request to_closed = g.transports[1]->isend(0, 3, bytes_of(out));
  try {
    g.transports[1]->wait(to_closed, soon());
    FAIL() << "a send to a closed transport completed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::PeerFailure);
  }
}

// A crash loses the rank's undelivered messages, eager ones included.
TEST(Loopback, ACrashedRanksEagerSendsAreLost) {
  LoopbackGroup g = make_loopback_group(2);
  std::vector<int> out{4, 5};
  { Request s = g.transports[0]->isend(1, 3, bytes_of(out)); }
  loopback_fail_rank(*g.fabric, 0);
  std::vector<int> in(2, 0);
  Request r = g.transports[1]->irecv(0, 3, bytes_of(in));
  try {
    g.transports[1]->wait(r, soon());
    FAIL() << "a crashed rank's message arrived";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::PeerFailure);
  }
  EXPECT_EQ(in, (std::vector<int>{0, 0}));
}

TEST(Loopback, DestroyedReceiveNoLongerMatches) {
  LoopbackGroup g = make_loopback_group(2);
  {
    std::vector<int> gone(1, -1);
    Request r = g.transports[1]->irecv(0, 3, bytes_of(gone));
  }  // cancelled here: the send below must not be written into `gone`
  std::vector<int> out{42};
  std::vector<int> in(1);
  Request s = g.transports[0]->isend(1, 3, bytes_of(out));
  Request r = g.transports[1]->irecv(0, 3, bytes_of(in));
  g.transports[1]->wait(r, soon());
  EXPECT_EQ(in[0], 42);
}

TEST(Loopback, InvalidPeerIsInvalidArgument) {
  LoopbackGroup g = make_loopback_group(2);
  std::vector<int> v(1);
  try {
    g.transports[0]->isend(2, 0, bytes_of(v));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument);
  }
  EXPECT_THROW(make_loopback_group(0), Error);
}

TEST(Communicator, TimeoutFromOptionsAndEnvironment) {
  LoopbackGroup g = make_loopback_group(1);
  ::setenv("FRUGAL_TIMEOUT", "0.25", 1);
  Communicator from_env(std::move(g.transports[0]));
  EXPECT_EQ(from_env.timeout(), 250ms);
  ::setenv("FRUGAL_TIMEOUT", "soon", 1);
  LoopbackGroup g2 = make_loopback_group(1);
  EXPECT_THROW(Communicator bad(std::move(g2.transports[0])), Error);
  ::unsetenv("FRUGAL_TIMEOUT");
  LoopbackGroup g3 = make_loopback_group(1);
  Communicator explicit_timeout(std::move(g3.transports[0]), {.timeout = 1500ms});
  EXPECT_EQ(explicit_timeout.timeout(), 1500ms);
  EXPECT_THROW(explicit_timeout.set_timeout(0ms), Error);
  EXPECT_EQ(parse_timeout_seconds("2", "x"), 2000ms);
  EXPECT_THROW(parse_timeout_seconds("-1", "x"), Error);
  EXPECT_THROW(parse_timeout_seconds("1s", "x"), Error);
}

TEST(Communicator, SequenceGivesDistinctTagsAndFailureSticks) {
  LoopbackGroup g = make_loopback_group(1);
  Communicator comm(std::move(g.transports[0]));
  const Tag first = comm.begin_collective();
  const Tag second = comm.begin_collective();
  EXPECT_NE(first, second);
  EXPECT_EQ(comm.sequence(), 2U);
  comm.fail(Error(ErrorCode::PeerFailure, "peer 3 died"));
  try {
    comm.begin_collective();
    FAIL() << "failed communicator was usable";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::PeerFailure);
    EXPECT_NE(std::string(e.what()).find("peer 3 died"), std::string::npos);
  }
}

}  // namespace
}  // namespace frugal
