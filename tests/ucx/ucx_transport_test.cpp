// The UCX transport itself, under mpirun (MPI only bootstraps and synchronises the test): which
// wires UCX chose, message sizes and matching rules, errors, cancellation. FRUGAL_TEST_EXPECT_TLS
// says what the endpoint to a local peer must use: "shm" (sysv or posix, with CMA for
// rendezvous) or "tcp".
#include <gtest/gtest.h>
#include <mpi.h>

#include <cstdlib>
#include <ctime>
#include <string>
#include <thread>
#include <vector>

#include "frugal/error.hpp"
#include "frugal/ucx.hpp"
#include "frugal/ucx_mpi.hpp"

namespace frugal {
namespace {

using namespace std::chrono_literals;

int world_size() {
  int s = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

std::unique_ptr<Communicator> make() {
  return make_ucx_communicator(MPI_COMM_WORLD);
}

// Large messages through UCX itself rather than frugal's direct copy.
std::unique_ptr<Communicator> make_without_direct_copy() {
  UcxOptions options;
  options.direct_copy = false;
  return make_ucx_communicator(MPI_COMM_WORLD, {}, options);
}

bool direct_copy_on(Transport& t, int peer) {
  return ucx_endpoint_info(t, peer).find("bytes: on\n") != std::string::npos;
}

Deadline soon() {
  return Clock::now() + 10s;
}

std::vector<std::byte> pattern(std::size_t n, int seed) {
  std::vector<std::byte> v(n);
  for (std::size_t i = 0; i < n; ++i)
    v[i] = std::byte((i * 131 + static_cast<std::size_t>(seed) * 17) & 0xff);
  return v;
}

TEST(UcxTransport, EndpointsUseTheExpectedWires) {
  auto c = make();
  const int peer = (c->rank() + 1) % c->size();
  const std::string info = ucx_endpoint_info(c->transport(), peer);
  const char* env = std::getenv("FRUGAL_TEST_EXPECT_TLS");
  const std::string expect = env != nullptr ? env : "shm";
  if (c->rank() == 0) std::printf("endpoint 0 -> %d:\n%s\n", peer, info.c_str());
  // All ranks of this test share one host and namespace: auto (the default) and callback give
  // these endpoints no UCX error handling (shared memory allowed), peer mode gives them peer's.
  const char* mode = std::getenv("FRUGAL_UCX_ERROR_MODE");
  const bool peer_mode = mode != nullptr && std::string(mode) == "peer";
  EXPECT_EQ(info.rfind(peer_mode ? "# frugal: err_mode=peer (peer on this host)"
                                 : "# frugal: err_mode=none (peer on this host)",
                       0),
            0u)
      << info;
  if (expect == "tcp") {
    EXPECT_NE(info.find("tcp/"), std::string::npos) << info;
    EXPECT_EQ(info.find("sysv/"), std::string::npos) << info;
    // UCX_TLS ruled CMA out, so frugal does not copy between the processes either.
    EXPECT_NE(info.find("of sends >= 65536 bytes: off\n"), std::string::npos) << info;
  } else if (peer != c->rank()) {
    EXPECT_TRUE(info.find("sysv/") != std::string::npos || info.find("posix/") != std::string::npos)
        << info;
    // Zero-copy rendezvous between processes of one host: CMA.
    EXPECT_NE(info.find("cma/"), std::string::npos) << info;
    EXPECT_NE(
        info.find(peer_mode ? "of sends >= 65536 bytes: off\n" : "of sends >= 65536 bytes: on\n"),
        std::string::npos)
        << info;
  }
  EXPECT_THROW(ucx_endpoint_info(c->transport(), c->size()), Error);
}

TEST(UcxTransport, EverySizeArrivesIntactWithItsLength) {
  auto c = make();
  Transport& t = c->transport();
  const int right = (t.rank() + 1) % t.size();
  const int left = (t.rank() + t.size() - 1) % t.size();
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{8}, std::size_t{4095},
                        std::size_t{65536}, std::size_t{1} << 20, std::size_t{16} << 20}) {
    const std::vector<std::byte> out = pattern(n, t.rank());
    std::vector<std::byte> in(n + 100);  // larger than the message: allowed
    Request r = t.irecv(left, 7, in);
    Request s = t.isend(right, 7, out);
    t.wait(r, soon());
    t.wait(s, soon());
    ASSERT_EQ(r.bytes(), n);
    in.resize(n);
    ASSERT_EQ(in, pattern(n, left)) << n;
  }
}

TEST(UcxTransport, SameSenderAndTagMatchInOrderAcrossProtocols) {
  auto c = make();
  Transport& t = c->transport();
  const int right = (t.rank() + 1) % t.size();
  const int left = (t.rank() + t.size() - 1) % t.size();
  // Eager and rendezvous sizes interleaved on one tag: FIFO must hold regardless.
  const std::vector<std::size_t> sizes = {10, 200'000, 3, 70'000, 1, 1 << 20, 5000, 0, 9};
  std::vector<std::vector<std::byte>> outs;
  for (std::size_t i = 0; i < sizes.size(); ++i)
    outs.push_back(pattern(sizes[i], static_cast<int>(i) + 100 * t.rank()));
  std::vector<std::vector<std::byte>> ins(sizes.size(), std::vector<std::byte>(1 << 20));
  std::vector<Request> requests;
  for (auto& in : ins) requests.push_back(t.irecv(left, 3, in));
  for (auto& out : outs) requests.push_back(t.isend(right, 3, out));
  std::vector<Request*> pointers;
  for (Request& r : requests) pointers.push_back(&r);
  t.wait_all(pointers, soon());
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    ASSERT_EQ(requests[i].bytes(), sizes[i]) << "message " << i;
    ins[i].resize(sizes[i]);
    EXPECT_EQ(ins[i], pattern(sizes[i], static_cast<int>(i) + 100 * left)) << "message " << i;
  }
}

TEST(UcxTransport, TagsAndSendersKeepMessagesApart) {
  auto c = make();
  Transport& t = c->transport();
  // Everyone sends (rank, tag) to everyone, tags 0, 1 and the largest; receives are posted in
  // the opposite order to the sends.
  const Tag tags[] = {0, 1, t.max_tag()};
  const int p = t.size();
  std::vector<std::int64_t> in(static_cast<std::size_t>(p) * 3, -1);
  std::vector<std::int64_t> out(static_cast<std::size_t>(p) * 3);
  std::vector<Request> requests;
  for (int peer = p - 1; peer >= 0; --peer) {
    for (int k = 2; k >= 0; --k) {
      auto& slot = in[static_cast<std::size_t>(peer * 3 + k)];
      requests.push_back(t.irecv(peer, tags[k], std::as_writable_bytes(std::span(&slot, 1))));
    }
  }
  for (int peer = 0; peer < p; ++peer) {
    for (int k = 0; k < 3; ++k) {
      auto& value = out[static_cast<std::size_t>(peer * 3 + k)];
      value = t.rank() * 1000 + k;
      requests.push_back(t.isend(peer, tags[k], std::as_bytes(std::span(&value, 1))));
    }
  }
  std::vector<Request*> pointers;
  for (Request& r : requests) pointers.push_back(&r);
  t.wait_all(pointers, soon());
  for (int peer = 0; peer < p; ++peer) {
    for (int k = 0; k < 3; ++k)
      EXPECT_EQ(in[static_cast<std::size_t>(peer * 3 + k)], peer * 1000 + k);
  }
}

TEST(UcxTransport, OversizeMessageIsMismatchNamingThePeer) {
  auto c = make();
  Transport& t = c->transport();
  if (t.rank() == 0) {
    const std::vector<std::byte> big(100'000);  // rendezvous size
    const std::vector<std::byte> small(64);     // eager size
    Request a = t.isend(1, 5, big);
    Request b = t.isend(1, 6, small);
    Request d = t.isend(1, 7, big);
    t.wait(b, soon());
    for (Request* r : {&a, &d}) {
      try {
        t.wait(*r, soon());
      } catch (const Error&) {
        // The receiver's truncation may or may not be reported to the sender.
      }
    }
  } else if (t.rank() == 1) {
    // Tag 7: a buffer that holds a direct copy's descriptor but not the message.
    for (Tag tag : {Tag{5}, Tag{6}, Tag{7}}) {
      std::vector<std::byte> tiny(tag == 7 ? 1000 : 16);
      Request r = t.irecv(0, tag, tiny);
      try {
        t.wait(r, soon());
        ADD_FAILURE() << "truncation not reported for tag " << tag;
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Mismatch) << e.what();
        EXPECT_NE(std::string(e.what()).find("peer 0"), std::string::npos) << e.what();
      }
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(UcxTransport, UnmatchedReceiveTimesOutNamingPeerAndTagThenCancels) {
  auto c = make();
  Transport& t = c->transport();
  const int left = (t.rank() + t.size() - 1) % t.size();
  const int right = (t.rank() + 1) % t.size();
  std::vector<std::byte> in(32);
  {
    Request r = t.irecv(left, 0xabc, in);
    const auto start = Clock::now();
    try {
      t.wait(r, Clock::now() + 200ms);
      ADD_FAILURE() << "no timeout";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
      EXPECT_NE(std::string(e.what()).find("tag 0xabc"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("peer " + std::to_string(left)), std::string::npos)
          << e.what();
    }
    EXPECT_LT(Clock::now() - start, 1s);
  }  // destroyed unfinished: cancelled
  MPI_Barrier(MPI_COMM_WORLD);
  // The message sent after the cancel goes to the next receive, not the cancelled one.
  const std::vector<std::byte> out = pattern(32, t.rank());
  Request s = t.isend(right, 0xabc, out);
  Request r = t.irecv(left, 0xabc, in);
  t.wait(r, soon());
  t.wait(s, soon());
  EXPECT_EQ(in, pattern(32, left));
}

TEST(UcxTransport, SendToSelf) {
  auto c = make();
  Transport& t = c->transport();
  const std::vector<std::byte> out = pattern(300'000, 1);
  std::vector<std::byte> in(out.size());
  Request r = t.irecv(t.rank(), 9, in);
  Request s = t.isend(t.rank(), 9, out);
  t.wait(r, soon());
  t.wait(s, soon());
  EXPECT_EQ(in, out);
}

TEST(UcxTransport, BadPeerIsInvalidArgument) {
  auto c = make();
  std::vector<std::byte> buffer(4);
  try {
    c->transport().isend(world_size(), 0, buffer);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
  }
  EXPECT_THROW(c->transport().irecv(-1, 0, buffer), Error);
}

TEST(UcxTransport, AbandonedRendezvousSendToAStalledPeerIsBounded) {
  auto c = make_without_direct_copy();
  Transport& t = c->transport();
  if (t.size() >= 2 && t.rank() == 0) {
    const std::vector<std::byte> big(8 << 20);
    const auto start = Clock::now();
    {
      Request s = t.isend(1, 11, big);  // rank 1 never receives it
      try {
        t.wait(s, Clock::now() + 200ms);
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
      }
    }  // abandoned: must return, and release the buffer
    EXPECT_LT(Clock::now() - start, 2s);
    // The endpoint was closed to let go of the buffer: further sends fail at once.
    EXPECT_THROW(t.isend(1, 12, big), Error);
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

// A direct copy's receiver copies from the sender's buffer itself, so a sender that gives up on a
// send must make a receiver that comes later refuse the data: the caller may already have reused
// the buffer. As with a cancelled UCX send, the receive never completes (Timeout here, where
// nothing failed), and the endpoint stays usable (nothing of UCX's holds the buffer).
TEST(UcxTransport, AbandonedDirectCopySendIsRefusedByALateReceiver) {
  auto c = make();
  Transport& t = c->transport();
  const bool direct = t.size() >= 2 && t.rank() < 2 && direct_copy_on(t, 1 - t.rank());
  std::vector<std::byte> big = pattern(1 << 20, 3);
  if (direct && t.rank() == 0) {
    {
      Request s = t.isend(1, 11, big);  // rank 1 receives it only after the barrier
      try {
        t.wait(s, Clock::now() + 200ms);
        ADD_FAILURE() << "no timeout";
      } catch (const Error& e) {
        EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
      }
      // Leaving the scope abandons the send.
    }
    std::fill(big.begin(), big.end(), std::byte{0xee});  // what a reused buffer would hold
  }
  MPI_Barrier(MPI_COMM_WORLD);
  if (direct && t.rank() == 1) {
    std::vector<std::byte> in(big.size());
    Request r = t.irecv(0, 11, in);
    try {
      t.wait(r, Clock::now() + 500ms);
      ADD_FAILURE() << "the abandoned send's data was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
    }
    Request next = t.irecv(0, 12, in);
    t.wait(next, soon());
    EXPECT_EQ(in, pattern(1 << 20, 4));
  } else if (direct && t.rank() == 0) {
    const std::vector<std::byte> out = pattern(1 << 20, 4);
    Request s = t.isend(1, 12, out);
    t.wait(s, soon());
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(UcxTransport, ManyCommunicatorsComeAndGo) {
  for (int i = 0; i < 5; ++i) {
    auto c = make();
    std::int64_t x = c->rank();
    Transport& t = c->transport();
    std::int64_t y = -1;
    const int right = (t.rank() + 1) % t.size();
    const int left = (t.rank() + t.size() - 1) % t.size();
    Request r = t.irecv(left, 1, std::as_writable_bytes(std::span(&y, 1)));
    Request s = t.isend(right, 1, std::as_bytes(std::span(&x, 1)));
    t.wait(r, soon());
    t.wait(s, soon());
    EXPECT_EQ(y, left);
  }
}

// wait_all sleeps on UCX's event descriptors once it has polled for a while without an event.
// These tests lengthen its longest sleep (FRUGAL_UCX_WAKE_US) to 5 s, so that a wake-up the
// sleep missed shows as a wait of seconds instead of being hidden by the periodic wake-up.
constexpr auto kLongSleep = 5s;

class LongSleep {
 public:
  LongSleep() { setenv("FRUGAL_UCX_WAKE_US", "5000000", 1); }
  ~LongSleep() { unsetenv("FRUGAL_UCX_WAKE_US"); }
  LongSleep(const LongSleep&) = delete;
  LongSleep& operator=(const LongSleep&) = delete;
};

bool polling_forced() {
  const char* mode = std::getenv("FRUGAL_UCX_WAIT");
  return mode != nullptr && std::string(mode) == "spin";
}

std::chrono::nanoseconds thread_cpu_time() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

// How long `wait` took and how much CPU this thread spent in it.
struct Waited {
  Clock::duration wall;
  std::chrono::nanoseconds cpu;
};

template <class Wait>
Waited timed(Wait wait) {
  const auto start = Clock::now();
  const auto cpu = thread_cpu_time();
  wait();
  return {Clock::now() - start, thread_cpu_time() - cpu};
}

// Ranks 0 and 1: one side posts at once and waits; the other posts 300 ms later (long after the
// spin, so the first is asleep). The early side must wake when the message (eager), the
// rendezvous request or acknowledgement (UCX's rendezvous, frugal's direct copy) arrives, well
// before the 5 s sleep would end, and must not have burned its core meanwhile.
void late_peer_wakes_the_sleeper(bool direct_copy) {
  const LongSleep long_sleep;
  UcxOptions options;
  options.direct_copy = direct_copy;
  auto c = make_ucx_communicator(MPI_COMM_WORLD, {}, options);
  Transport& t = c->transport();
  if (t.size() < 2) GTEST_SKIP() << "needs 2 ranks";
  constexpr auto kLate = 300ms;
  int tag = 20;
  for (const std::size_t n : {std::size_t{1000}, std::size_t{1} << 20}) {
    for (const bool receiver_early : {true, false}) {
      ++tag;
      MPI_Barrier(MPI_COMM_WORLD);
      if (t.rank() > 1) continue;
      const bool sender = t.rank() == 0;
      const bool early = sender != receiver_early;
      const std::vector<std::byte> out = pattern(n, tag);
      std::vector<std::byte> in(n);
      if (!early) std::this_thread::sleep_for(kLate);
      Request r = sender ? t.isend(1, tag, out) : t.irecv(0, tag, in);
      const Waited w = timed([&] { t.wait(r, Clock::now() + 20s); });
      if (!sender) {
        EXPECT_EQ(in, out) << n;
      }
      if (early) {
        const std::string what = std::to_string(n) + " bytes, " +
                                 (receiver_early ? "receiver" : "sender") + " early, direct copy " +
                                 (direct_copy ? "on" : "off");
        // A lost wake-up ends the sleep only after kLongSleep.
        EXPECT_LT(w.wall, kLate + 2s) << what;
        // A receive cannot end before its send is posted; an early send ends at once when UCX
        // buffers it (eager), else when the receiver has taken the data.
        if (receiver_early) {
          EXPECT_GE(w.wall, kLate / 2) << what;
        }
        // The old loop polled throughout (and yielded): a core's worth, less what others took.
        if (w.wall >= kLate / 2) {
          EXPECT_LT(w.cpu, w.wall / 4) << what;
        }
      }
    }
  }
  MPI_Barrier(MPI_COMM_WORLD);
}

TEST(UcxTransport, LatePeerWakesASleepingWait) {
  if (polling_forced()) GTEST_SKIP() << "FRUGAL_UCX_WAIT=spin";
  late_peer_wakes_the_sleeper(true);
}

TEST(UcxTransport, LatePeerWakesASleepingWaitWithoutDirectCopy) {
  if (polling_forced()) GTEST_SKIP() << "FRUGAL_UCX_WAIT=spin";
  late_peer_wakes_the_sleeper(false);
}

// The deadline ends a sleeping wait on time, not at the end of the (5 s) sleep.
TEST(UcxTransport, DeadlineEndsASleepingWaitOnTime) {
  if (polling_forced()) GTEST_SKIP() << "FRUGAL_UCX_WAIT=spin";
  const LongSleep long_sleep;
  auto c = make();
  Transport& t = c->transport();
  const int left = (t.rank() + t.size() - 1) % t.size();
  std::vector<std::byte> in(8);
  Request r = t.irecv(left, 0x5ee, in);  // nobody sends it
  const Waited w = timed([&] {
    try {
      t.wait(r, Clock::now() + 300ms);
      ADD_FAILURE() << "no timeout";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::Timeout) << e.what();
    }
  });
  EXPECT_GE(w.wall, 300ms);
  EXPECT_LT(w.wall, 300ms + 1s);
  EXPECT_LT(w.wall, kLongSleep);
  EXPECT_LT(w.cpu, w.wall / 4);
  MPI_Barrier(MPI_COMM_WORLD);
}

// The settings are checked, each naming itself.
TEST(UcxTransport, BadWaitSettingsAreInvalidArgument) {
  for (const auto& [name, value] :
       {std::pair{"FRUGAL_UCX_WAIT", "sleep"}, std::pair{"FRUGAL_UCX_SPIN_US", "50us"},
        std::pair{"FRUGAL_UCX_YIELD_US", "-1"}, std::pair{"FRUGAL_UCX_WAKE_US", "0"},
        std::pair{"FRUGAL_UCX_WAKE_US", "99999999999"}}) {
    const char* before = std::getenv(name);
    const std::string saved = before != nullptr ? before : "";
    setenv(name, value, 1);
    try {
      make();
      ADD_FAILURE() << name << "=" << value << " accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::InvalidArgument) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
    if (before != nullptr) {
      setenv(name, saved.c_str(), 1);
    } else {
      unsetenv(name);
    }
  }
}

}  // namespace
}  // namespace frugal
