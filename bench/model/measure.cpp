#include "measure.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "frugal/compression/error_feedback.hpp"
#include "frugal/error.hpp"

namespace frugal::model {

namespace {

using Clock = std::chrono::steady_clock;

// The fastest of `repeats` runs of `work`, after one run that warms caches and page tables.
template <typename F>
double fastest(int repeats, F&& work) {
  work();
  double best = 0;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    work();
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    best = r == 0 ? s : std::min(best, s);
  }
  return best;
}

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const std::size_t colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "unknown CPU";
}

// Gradient-like input: normal values, so that quantizers and top-k see realistic spreads.
std::vector<float> gradient(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(gen);
  return v;
}

// The compressed allreduce scans its input and agrees that no block can flag before it encodes,
// so its encodes keep no rollback copy of the residual; time them the same way (the input here is
// normal values, far inside every format's range).
constexpr auto kScanned = compression::FeedbackInput::FlagFree;

void measure_method(Kernels& c, compression::Method method, std::span<const float> grad,
                    int repeats) {
  compression::CompressionConfig config;  // frugal-bench's defaults
  config.method = method;
  const auto compressor = compression::make_compressor(config);
  const std::size_t n = grad.size();
  const double elements = static_cast<double>(n);
  std::vector<std::byte> payload(compressor->max_encoded_bytes(n));
  std::vector<float> applied(n);
  std::vector<float> out(n);
  compression::ErrorFeedback feedback(n);
  std::uint64_t step = 0;
  MethodKernels& k = c.kernels(method);
  std::size_t bytes = 0;
  k.encode_payload = fastest(repeats,
                             [&] {
                               compression::Rng rng(1, 0, ++step, 0);
                               bytes = compression::encode_payload_with_feedback(
                                   *compressor, feedback, grad, payload, rng, 0, kScanned);
                             }) /
                     elements;
  k.encode_apply = fastest(repeats,
                           [&] {
                             compression::Rng rng(1, 0, ++step, 0);
                             bytes = compression::encode_with_feedback(
                                 *compressor, feedback, grad, payload, rng, applied, 0, kScanned);
                           }) /
                   elements;
  const std::span<const std::byte> one(payload.data(), bytes);
  k.decode = fastest(repeats, [&] { compressor->decode(one, out); }) / elements;
  const double add = fastest(repeats, [&] { compressor->decode_add(one, out); });
  k.decode_add = method == compression::Method::TopK
                     ? add / static_cast<double>(std::max<std::size_t>(1, compressor->k_for(n)))
                     : add / elements;
  // decode_sum's cost grows with the payload count: fit base + per payload from 1 and 4.
  const std::vector<std::span<const std::byte>> single{one};
  const std::vector<std::span<const std::byte>> four(4, one);
  const double t1 = fastest(repeats, [&] { compressor->decode_sum(single, out); }) / elements;
  const double t4 = fastest(repeats, [&] { compressor->decode_sum(four, out); }) / elements;
  k.decode_sum_payload = std::max(0.0, (t4 - t1) / 3);
  k.decode_sum_base = std::max(0.0, t1 - k.decode_sum_payload);
}

// A two-way merge of sorted (index, value) pairs, adding values where both have an index: the
// work SparseVector::merged does per step of sparse recursive doubling.
double measure_sparse_merge(std::size_t entries, int repeats) {
  std::vector<std::uint32_t> ia(entries), ib(entries);
  for (std::size_t i = 0; i < entries; ++i) {
    ia[i] = static_cast<std::uint32_t>(3 * i);
    ib[i] = static_cast<std::uint32_t>(3 * i + (i % 4 == 0 ? 0 : 1));
  }
  const std::vector<float> va(entries, 1.0f), vb(entries, 2.0f);
  std::vector<std::uint32_t> io;
  std::vector<float> vo;
  const double seconds = fastest(repeats, [&] {
    io.clear();
    vo.clear();
    io.reserve(2 * entries);
    vo.reserve(2 * entries);
    std::size_t a = 0, b = 0;
    while (a < entries || b < entries) {
      if (b == entries || (a < entries && ia[a] < ib[b])) {
        io.push_back(ia[a]);
        vo.push_back(va[a++]);
      } else if (a == entries || ib[b] < ia[a]) {
        io.push_back(ib[b]);
        vo.push_back(vb[b++]);
      } else {
        io.push_back(ia[a]);
        vo.push_back(va[a++] + vb[b++]);
      }
    }
  });
  return seconds / static_cast<double>(2 * entries);
}

Kernels measure_at(std::size_t elements, int repeats) {
  Kernels c;
  const double n = static_cast<double>(elements);
  const std::vector<float> grad = gradient(elements, 1);
  std::vector<float> a = gradient(elements, 2);
  compression::ErrorFeedback feedback(elements);
  float sink = 0;
  c.scan =
      fastest(repeats, [&] { sink += compression::max_compensated_magnitude(grad, &feedback); }) /
      n;
  c.reduce = fastest(repeats,
                     [&] {
                       for (std::size_t i = 0; i < elements; ++i) a[i] += grad[i];
                     }) /
             n;
  c.fill = fastest(repeats, [&] { std::fill(a.begin(), a.end(), sink * 0.0f); }) / n;
  volatile std::byte seen{};
  c.fresh = fastest(repeats,
                    [&] {
                      std::vector<std::byte> fresh(elements * sizeof(float));
                      seen = fresh[elements];
                    }) /
            n;
  c.sparse_merge = measure_sparse_merge(std::max<std::size_t>(1, elements / 100), repeats);
  for (const compression::Method method : kModelMethods) measure_method(c, method, grad, repeats);
  return c;
}

// A file descriptor closed on scope exit.
class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {
    if (fd_ < 0) throw Error(ErrorCode::Transport, "loopback TCP: socket failed");
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;
  ~Socket() { ::close(fd_); }
  int fd() const noexcept { return fd_; }

 private:
  int fd_;
};

void transfer(int fd, std::byte* data, std::size_t size, bool send) {
  while (size > 0) {
    const ssize_t n = send ? ::send(fd, data, size, 0) : ::recv(fd, data, size, 0);
    if (n <= 0) throw Error(ErrorCode::Transport, "loopback TCP: send or recv failed");
    data += n;
    size -= static_cast<std::size_t>(n);
  }
}

}  // namespace

double measure_post_seconds(int messages) {
  require(messages >= 1, "messages", "must be at least 1");
  const Socket listener(::socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  auto* raw = reinterpret_cast<sockaddr*>(&address);
  if (::bind(listener.fd(), raw, sizeof address) != 0 || ::listen(listener.fd(), 1) != 0 ||
      ::getsockname(listener.fd(), raw, &length) != 0) {
    throw Error(ErrorCode::Transport, "loopback TCP: cannot listen on 127.0.0.1");
  }
  const Socket sender(::socket(AF_INET, SOCK_STREAM, 0));
  if (::connect(sender.fd(), raw, sizeof address) != 0) {
    throw Error(ErrorCode::Transport, "loopback TCP: cannot connect to 127.0.0.1");
  }
  const Socket receiver(::accept(listener.fd(), nullptr, nullptr));
  const int one = 1;
  ::setsockopt(sender.fd(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::array<std::byte, 64> message{};
  const auto start = Clock::now();
  for (int i = 0; i < messages; ++i) {
    transfer(sender.fd(), message.data(), message.size(), true);
    transfer(receiver.fd(), message.data(), message.size(), false);
  }
  return std::chrono::duration<double>(Clock::now() - start).count() / messages;
}

Calibration measure_kernels(std::size_t small_elements, std::size_t large_elements, int repeats) {
  require(small_elements >= 4096 && small_elements <= large_elements, "elements",
          "must be at least 4096, the small size at most the large one");
  require(repeats >= 1, "repeats", "must be at least 1");
  Calibration c;
  c.machine = cpu_name() + ", " + std::to_string(std::thread::hardware_concurrency()) + " cores";
  c.small_elements = small_elements;
  c.large_elements = large_elements;
  c.small = measure_at(small_elements, repeats);
  c.large = measure_at(large_elements, repeats);
  c.post_seconds = measure_post_seconds(20000);
  for (int r = 1; r < repeats; ++r)
    c.post_seconds = std::min(c.post_seconds, measure_post_seconds(20000));
  return c;
}

}  // namespace frugal::model
