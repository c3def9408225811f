// libFuzzer target: the checkpoint images of the error-feedback states (AllreduceState,
// HierarchicalState, PowerSgdState, ErrorFeedback), read by restore() from whatever file a
// resume is pointed at, and PowerSGD's agreement (powersgd_agree) reading the sums a peer sent.
// The first byte picks which; the rest is the image, or for the agreement the peer's bytes.
// Each must be refused with a frugal::Error (InvalidArgument or Mismatch; the agreement also
// Timeout when the peer's messages run out) or accepted, and an accepted image must save again
// into one that restores to the same bytes. Never an out-of-bounds access, an exception of
// another type or undefined behaviour.
//
// Seeds: with FRUGAL_FUZZ_WRITE_SEEDS=DIR set, the binary writes valid images made by the
// library (states bound by real allreduces on a loopback group) into DIR and exits; bench/fuzz
// does so before fuzzing.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "frugal/collectives/allreduce.hpp"
#include "frugal/collectives/allreduce_state.hpp"
#include "frugal/collectives/hierarchical.hpp"
#include "frugal/collectives/powersgd.hpp"
#include "frugal/communicator.hpp"
#include "frugal/compression/error_feedback.hpp"
#include "frugal/error.hpp"
#include "frugal/loopback.hpp"
#include "frugal/transport.hpp"
#include "powersgd_agreement.hpp"

using namespace frugal;

namespace {

enum Target : std::uint8_t {
  kAllreduceState,
  kHierarchicalState,
  kPowerSgdState,
  kErrorFeedback,
  kPowerSgdAgreement,
  kTargets
};

// FRUGAL_FUZZ_VERBOSE=1: say what each input ended in (for replaying one by hand).
bool verbose() {
  static const bool on = std::getenv("FRUGAL_FUZZ_VERBOSE") != nullptr;
  return on;
}

[[noreturn]] void fail(const char* why) {
  std::fprintf(stderr, "fuzz_state_images: %s\n", why);
  __builtin_trap();
}

// A restore that throws must throw frugal::Error of an expected code; anything else escapes
// to libFuzzer, which reports it as a crash.
template <typename F>
bool accepted(F&& restore) {
  try {
    restore();
    return true;
  } catch (const Error& e) {
    if (verbose()) std::fprintf(stderr, "restore: %s\n", e.what());
    if (e.code() != ErrorCode::InvalidArgument && e.code() != ErrorCode::Mismatch) {
      fail("restore threw an unexpected error code");
    }
    return false;
  }
}

// save(restore(image)) must restore, and save the same bytes again: a checkpoint of a resumed
// run is as good as the one it resumed from.
template <typename State>
void round_trip(const State& state, const std::function<State()>& make) {
  const std::vector<std::byte> image = state.save();
  State again = make();
  try {
    again.restore(image);
  } catch (const Error&) {
    fail("a restored state saved an image that does not restore");
  }
  if (again.save() != image) fail("a restored state saves different bytes the second time");
}

void allreduce_state(std::span<const std::byte> image) {
  AllreduceState state;
  if (!accepted([&] { state.restore(image); })) return;
  round_trip<AllreduceState>(state, [&] { return AllreduceState(state.decay()); });
}

void hierarchical_state(std::span<const std::byte> image) {
  HierarchicalState state;
  if (!accepted([&] { state.restore(image); })) return;
  if (const auto& b = state.binding()) {
    if (b->hosts < 1 || b->ranks_on_host < 1 || b->local_rank < 0 ||
        b->local_rank >= b->ranks_on_host) {
      fail("HierarchicalState: a binding no topology has");
    }
  }
  round_trip<HierarchicalState>(state, [] { return HierarchicalState(); });
}

void powersgd_state(std::span<const std::byte> image) {
  PowerSgdState state;
  if (!accepted([&] { state.restore(image); })) return;
  if (const auto& layout = state.layout()) {
    // Every Q and residual the restored state hands out has the size its tensor's shape says.
    for (std::size_t i = 0; 2 * i + 1 < layout->shapes.size(); ++i) {
      const std::uint64_t rows = layout->shapes[2 * i];
      const std::uint64_t cols = layout->shapes[2 * i + 1];
      const std::size_t q = state.q(i).size();
      const std::size_t r = state.residual(i).size();
      if (q != 0 && q != cols * static_cast<std::uint64_t>(layout->approximation_rank)) {
        fail("PowerSgdState: Q of the wrong size");
      }
      if (r != 0 && r != rows * cols) fail("PowerSgdState: residual of the wrong size");
      // restore() promises finite values (powersgd.hpp).
      for (const float v : state.q(i)) {
        if (!std::isfinite(v)) fail("PowerSgdState: a non-finite Q accepted");
      }
      for (const float v : state.residual(i)) {
        if (!std::isfinite(v)) fail("PowerSgdState: a non-finite residual accepted");
      }
    }
  }
  round_trip<PowerSgdState>(state, [] { return PowerSgdState(); });
}

void error_feedback(std::span<const std::byte> image) {
  // Sizes the seeds were saved with and one they were not (Mismatch).
  for (const std::size_t size : {std::size_t{0}, std::size_t{5}, std::size_t{37}}) {
    compression::ErrorFeedback feedback(size);
    if (!accepted([&] { feedback.restore(image); })) continue;
    if (feedback.residual().size() != size) fail("ErrorFeedback: restored into another size");
    compression::ErrorFeedback again(size);
    try {
      again.restore(feedback.save());
    } catch (const Error&) {
      fail("ErrorFeedback: a restored state saved an image that does not restore");
    }
  }
}

// Rank 0 of two, whose peer echoes rank 0's own messages (a peer with the same terms), except
// that the messages picked by `mask` (bit i: the i-th message received, i < 6) are XORed with
// `stream`, as far as it reaches: what a peer with corrupt memory or another build sends.
class EchoPeer final : public Transport {
 public:
  EchoPeer(std::span<const std::byte> stream, std::uint8_t mask) : stream_(stream), mask_(mask) {}

  int rank() const noexcept override { return 0; }
  int size() const noexcept override { return 2; }
  std::string_view name() const noexcept override { return "echo"; }
  Tag max_tag() const noexcept override { return Tag{1} << 30; }

  Request isend(int peer, Tag tag, std::span<const std::byte> data) override {
    check_peer(peer, "isend");
    sent_[tag].emplace_back(data.begin(), data.end());
    auto op = std::make_unique<PendingOp>(*this, OpKind::Send, peer, tag, data.size());
    op->transferred_bytes = data.size();
    op->complete = true;
    return Request(std::move(op));
  }
  Request irecv(int peer, Tag tag, std::span<std::byte> data) override {
    check_peer(peer, "irecv");
    return Request(std::make_unique<Recv>(*this, peer, tag, data));
  }
  bool test(Request& request) override {
    deliver(request);
    return request.done();
  }
  void wait_all(std::span<Request* const> requests, Deadline) override {
    for (Request* r : requests) {
      if (r == nullptr || r->done()) continue;
      deliver(*r);
      // The echo has nothing more to send: waiting longer cannot help.
      if (!r->done()) throw Error(ErrorCode::Timeout, context(*r->op()) + ": the peer is silent");
    }
  }
  void cancel(PendingOp&) noexcept override {}

 private:
  struct Recv final : PendingOp {
    Recv(Transport& owner, int peer, Tag tag, std::span<std::byte> buffer)
        : PendingOp(owner, OpKind::Recv, peer, tag, buffer.size()), buffer(buffer) {}
    std::span<std::byte> buffer;
  };

  void deliver(Request& request) {
    auto* op = dynamic_cast<Recv*>(request.op());
    if (op == nullptr || op->complete) return;
    auto queue = sent_.find(op->tag);
    if (queue == sent_.end() || queue->second.empty()) return;
    std::vector<std::byte> message = std::move(queue->second.front());
    queue->second.pop_front();
    if (message.size() > op->buffer.size()) {
      throw Error(ErrorCode::Mismatch, context(*op) + ": message larger than the buffer");
    }
    if (received_ < 6 && (mask_ >> received_ & 1) != 0) {
      // XOR, so that zeros keep what the fuzzer has not learnt to change (the agreement block
      // in front of the sums) and it can aim at the rest.
      const std::size_t n = std::min(message.size(), stream_.size());
      for (std::size_t i = 0; i < n; ++i) message[i] ^= stream_[i];
      stream_ = stream_.subspan(n);
    }
    if (verbose()) {
      std::fprintf(stderr, "message %d: %zu bytes, tag %u\n", received_, message.size(), op->tag);
    }
    ++received_;
    std::copy(message.begin(), message.end(), op->buffer.begin());
    op->transferred_bytes = message.size();
    op->complete = true;
  }

  std::span<const std::byte> stream_;
  std::uint8_t mask_;
  int received_ = 0;
  std::map<Tag, std::deque<std::vector<std::byte>>> sent_;
};

// Rank 0's powersgd_agree against a peer whose float64 sums (and the allreduce's own agreement
// block before them) are the fuzzer's: byte 0 picks the messages XORed (bits 0-5), this
// rank's NaN flag (bit 6) and a state bound elsewhere (bit 7). Agreement or a frugal::Error.
void powersgd_agreement(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  const auto knobs = static_cast<std::uint8_t>(bytes[0]);
  Communicator comm(std::make_unique<EchoPeer>(bytes.subspan(1), knobs & 0x3f));
  detail::PowerSgdTerms terms;
  terms.tensors = 3;
  terms.shapes_digest = 0x1234'5678'9abc'def0ULL;
  terms.rank = 2;
  terms.min_compression_rate_bits = 0x4000'0000'0000'0000ULL;  // 2.0
  terms.start_iter = 10;
  terms.seed = 7;
  terms.step = 42;
  std::size_t sent = 0;
  try {
    detail::powersgd_agree(comm, terms, (knobs & 0x40) != 0, (knobs & 0x80) != 0 ? "shapes" : "",
                           CollectiveOptions{}, sent);
  } catch (const Error& e) {
    if (verbose()) std::fprintf(stderr, "powersgd_agree: %s\n", e.what());
    if (e.code() != ErrorCode::Mismatch && e.code() != ErrorCode::Timeout &&
        e.code() != ErrorCode::InvalidArgument) {
      fail("powersgd_agree threw an unexpected error code");
    }
    return;
  }
  if (verbose()) std::fprintf(stderr, "powersgd_agree: agreed\n");
  // An agreement with this rank's own flags raised would have been a Mismatch.
  if ((knobs & 0x80) != 0) fail("powersgd_agree accepted a state bound elsewhere");
}

// Seeds: states bound by real collectives on loopback ranks, saved.
void run_ranks(int size, const std::function<void(Communicator&)>& body) {
  LoopbackGroup group = make_loopback_group(size);
  std::vector<std::thread> threads;
  for (auto& transport : group.transports) {
    threads.emplace_back([&body, t = std::move(transport)]() mutable {
      Communicator comm(std::move(t));
      body(comm);
    });
  }
  for (std::thread& t : threads) t.join();
}

std::vector<float> ramp(std::size_t n, int rank) {
  std::vector<float> x(n);
  for (std::size_t i = 0; i < n; ++i) x[i] = std::sin(0.37f * static_cast<float>(i + 11 * rank));
  return x;
}

void write_seeds(const std::filesystem::path& dir) {
  std::filesystem::create_directories(dir);
  int files = 0;
  const auto write = [&](Target target, std::span<const std::byte> image) {
    std::ofstream out(dir / ("state-" + std::to_string(files++)), std::ios::binary);
    const char t = static_cast<char>(target);
    out.write(&t, 1);
    out.write(reinterpret_cast<const char*>(image.data()),
              static_cast<std::streamsize>(image.size()));
  };
  std::mutex mutex;
  write(kAllreduceState, AllreduceState().save());
  for (const compression::Method method :
       {compression::Method::OneBit, compression::Method::TopK, compression::Method::Qsgd}) {
    run_ranks(2, [&](Communicator& comm) {
      AllreduceState state;
      AllreduceOptions options;
      options.compression.method = method;
      options.compression.density = 0.1;
      options.compression.bucket = 16;
      options.state = &state;
      static constexpr std::size_t kSegments[] = {20, 44};
      if (method == compression::Method::Qsgd) options.segments = kSegments;
      std::vector<float> x = ramp(64, comm.rank());
      allreduce(comm, std::span<float>(x), options);
      std::lock_guard lock(mutex);
      if (comm.rank() == 1) write(kAllreduceState, state.save());
    });
  }
  write(kHierarchicalState, HierarchicalState().save());
  const std::vector<std::string> hosts = {"a", "a", "b", "b"};
  run_ranks(4, [&](Communicator& comm) {
    Hierarchy hierarchy(comm, topology_from_identities(hosts, comm.rank()));
    HierarchicalState state;
    AllreduceOptions options;
    options.compression.method = compression::Method::OneBit;
    options.compression.bucket = 16;
    std::vector<float> x = ramp(50, comm.rank());
    hierarchical_allreduce(hierarchy, std::span<float>(x), options, &state);
    std::lock_guard lock(mutex);
    if (comm.rank() == 3) write(kHierarchicalState, state.save());
  });
  write(kPowerSgdState, PowerSgdState().save());
  for (const bool feedback : {true, false}) {
    run_ranks(2, [&](Communicator& comm) {
      PowerSgdState state;
      PowerSgdOptions options;
      options.rank = 2;
      options.start_iter = 0;
      options.error_feedback = feedback;
      std::vector<float> a = ramp(12 * 10, comm.rank());
      std::vector<float> b = ramp(3, comm.rank());  // too small: reduced exactly
      const PowerSgdTensor tensors[] = {{a, 12, 10}, {b, 3, 1}};
      powersgd_allreduce(comm, tensors, state, options);
      powersgd_allreduce(comm, tensors, state, options);
      std::lock_guard lock(mutex);
      if (comm.rank() == 0) write(kPowerSgdState, state.save());
    });
  }
  for (const std::size_t size : {std::size_t{0}, std::size_t{5}}) {
    compression::ErrorFeedback feedback(size, 0.5f);
    const std::vector<float> compensated = ramp(size, 1);
    const std::vector<float> applied(size, 0.25f);
    feedback.absorb(compensated, applied);
    write(kErrorFeedback, feedback.save());
  }
  // The agreement: an untouched echo (agreement), and the same with its one message (the dense
  // allreduce's 32-byte agreement block and 38 float64 sums at P = 2) XORed with zeros, for the
  // fuzzer to aim at.
  const std::byte echo[] = {std::byte{0}};
  write(kPowerSgdAgreement, echo);
  std::vector<std::byte> xor_stream(1 + 32 + 38 * sizeof(double), std::byte{0});
  xor_stream[0] = std::byte{0x01};
  write(kPowerSgdAgreement, xor_stream);
  std::fprintf(stderr, "fuzz_state_images: wrote %d seeds to %s\n", files, dir.c_str());
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("FRUGAL_FUZZ_WRITE_SEEDS"); dir != nullptr && *dir != 0) {
    write_seeds(dir);
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(data + 1), size - 1);
  switch (data[0] % kTargets) {
    case kAllreduceState:
      allreduce_state(bytes);
      break;
    case kHierarchicalState:
      hierarchical_state(bytes);
      break;
    case kPowerSgdState:
      powersgd_state(bytes);
      break;
    case kErrorFeedback:
      error_feedback(bytes);
      break;
    default:
      powersgd_agreement(bytes);
      break;
  }
  return 0;
}
