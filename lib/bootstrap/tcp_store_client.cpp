// The TCP rendezvous store's client. Blocking calls built from Asio's asynchronous operations on a
// private io_context, run until a deadline: plain blocking socket calls cannot time out, and a
// bootstrap must never hang on a peer that did not show up.

#include <array>
#include <string>
#include <thread>
#include <vector>

#include "asio.hpp"
#include "frugal/error.hpp"
#include "frugal/tcp_store.hpp"
#include "frugal/transport.hpp"
#include "tcp_store_protocol.hpp"

namespace frugal {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace bootstrap_wire;

class TcpStoreClient::Impl {
 public:
  explicit Impl(const TcpBootstrapOptions& options) : options_(options) {
    require(options.world_size >= 1, "world_size",
            "must be at least 1, got " + std::to_string(options.world_size));
    require(
        options.rank >= 0 && options.rank < options.world_size, "rank",
        std::to_string(options.rank) + " is outside 0.." + std::to_string(options.world_size - 1));
    require(options.token.size() <= kMaxTokenBytes, "token",
            "must be at most " + std::to_string(kMaxTokenBytes) + " bytes");
    connect();
    hello();
  }

  ~Impl() {
    boost::system::error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  void set(std::string_view key, std::span<const std::byte> value) {
    check_key(key);
    Writer frame(Type::Set);
    frame.short_string(key);
    if (frame.body_size() + value.size() > options_.limits.max_message_bytes) {
      throw Error(ErrorCode::InvalidArgument,
                  "bootstrap store: value of " + std::to_string(value.size()) + " bytes for key '" +
                      std::string(key) + "' exceeds the message limit of " +
                      std::to_string(options_.limits.max_message_bytes) + " bytes");
    }
    frame.raw(value);
    const std::vector<std::byte> reply = request(frame.finish(), "set '" + std::string(key) + "'");
    expect(reply, Type::Ok, "set");
  }

  std::vector<std::byte> get(std::string_view key) {
    check_key(key);
    Writer frame(Type::Get);
    frame.short_string(key);
    const std::vector<std::byte> reply = request(frame.finish(), "get '" + std::string(key) + "'");
    expect(reply, Type::Value, "get");
    return std::vector<std::byte>(reply.begin() + 1, reply.end());
  }

 private:
  std::string where() const {
    return "bootstrap store at " + options_.address.host + ":" +
           std::to_string(options_.address.port) + " (rank " + std::to_string(options_.rank) +
           " of " + std::to_string(options_.world_size) + ")";
  }

  void check_key(std::string_view key) const {
    require(!key.empty() && key.size() <= kMaxKeyBytes, "key",
            "must be 1.." + std::to_string(kMaxKeyBytes) + " bytes");
  }

  // Runs the io_context until `done` or the deadline. On the deadline, closes the socket (the
  // connection is unusable after a half-done exchange), lets the aborted handlers run so that
  // nothing refers to the caller's locals afterwards, and returns false.
  bool run_until(const bool& done, Deadline deadline) {
    io_.restart();
    while (!done) {
      if (io_.run_one_until(deadline) == 0 && !done) {
        if (Clock::now() < deadline && !io_.stopped()) continue;
        // Closing (not just cancelling) also fails any operation a late handler starts.
        boost::system::error_code ignored;
        socket_.close(ignored);
        io_.restart();
        io_.run();
        return false;  // the handlers ran, but with operation_aborted
      }
    }
    return true;
  }

  void connect() {
    const Deadline deadline = Clock::now() + options_.timeout;
    std::string last_error = "no attempt";
    auto backoff = std::chrono::milliseconds(10);
    for (int attempt = 1;; ++attempt) {
      boost::system::error_code ec;
      tcp::resolver resolver(io_);
      const auto endpoints =
          resolver.resolve(options_.address.host, std::to_string(options_.address.port), ec);
      if (!ec) {
        bool done = false;
        boost::system::error_code connect_ec = asio::error::timed_out;
        asio::async_connect(socket_, endpoints,
                            [&](boost::system::error_code e, const tcp::endpoint&) {
                              connect_ec = e;
                              done = true;
                            });
        const Deadline attempt_deadline =
            std::min(deadline, Clock::now() + std::chrono::seconds(2));
        run_until(done, attempt_deadline);
        if (done && !connect_ec) {
          socket_.set_option(tcp::no_delay(true), ec);
          return;
        }
        last_error = connect_ec.message();
        boost::system::error_code ignored;
        socket_.close(ignored);
      } else {
        last_error = "cannot resolve '" + options_.address.host + "': " + ec.message();
      }
      if (Clock::now() + backoff >= deadline) {
        throw Error(ErrorCode::Timeout,
                    "could not connect to the " + where() + " within " +
                        std::to_string(options_.timeout.count()) + " ms after " +
                        std::to_string(attempt) + " attempt(s) (last error: " + last_error +
                        "); is rank 0 running, and is FRUGAL_ADDR the same on every rank?");
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(250));
    }
  }

  void hello() {
    Writer frame(Type::Hello);
    frame.u32(kVersion).i32(options_.rank).i32(options_.world_size).short_string(options_.token);
    expect(request(frame.finish(), "hello"), Type::Ok, "hello");
  }

  // Sends one frame and reads one reply frame (its body), within options_.timeout.
  std::vector<std::byte> request(const std::vector<std::byte>& frame, const std::string& what) {
    const Deadline deadline = Clock::now() + options_.timeout;
    bool done = false;
    boost::system::error_code error;
    std::array<std::byte, kHeaderBytes> header{};
    std::vector<std::byte> body;
    std::string oversize;
    auto fail = [&](boost::system::error_code ec) {
      error = ec;
      done = true;
    };
    asio::async_write(socket_, asio::buffer(frame), [&](boost::system::error_code ec, std::size_t) {
      if (ec) return fail(ec);
      asio::async_read(
          socket_, asio::buffer(header), [&](boost::system::error_code ec2, std::size_t) {
            if (ec2) return fail(ec2);
            const std::uint32_t length = decode_length(
                std::span<const std::byte, kHeaderBytes>(header.data(), kHeaderBytes));
            if (length == 0 || length > options_.limits.max_message_bytes) {
              oversize = "reply of " + std::to_string(length) + " bytes is outside 1.." +
                         std::to_string(options_.limits.max_message_bytes);
              return fail({});
            }
            body.resize(length);
            asio::async_read(socket_, asio::buffer(body),
                             [&](boost::system::error_code ec3, std::size_t) { fail(ec3); });
          });
    });
    if (!run_until(done, deadline)) {
      throw Error(ErrorCode::Timeout, where() + ": " + what + " got no reply within " +
                                          std::to_string(options_.timeout.count()) +
                                          " ms (a rank missing or too slow?)");
    }
    if (!oversize.empty())
      throw Error(ErrorCode::Transport, where() + ": " + what + ": " + oversize);
    if (error) {
      throw Error(ErrorCode::Transport,
                  where() + ": " + what + ": " + error.message() +
                      (error == asio::error::eof ? " (the server closed the connection)" : ""));
    }
    return body;
  }

  void expect(const std::vector<std::byte>& reply, Type type, const std::string& what) const {
    Reader in(reply, "reply");
    const auto got = static_cast<Type>(in.u8());
    if (got == Type::Error) {
      const auto code = static_cast<ErrorCode>(in.u8());
      const auto text = in.rest();
      const bool known = code == ErrorCode::InvalidArgument || code == ErrorCode::Mismatch;
      throw Error(known ? code : ErrorCode::Transport,
                  where() + " refused " + what + ": " +
                      std::string(reinterpret_cast<const char*>(text.data()), text.size()));
    }
    if (got != type) {
      throw Error(ErrorCode::Transport, where() + ": unexpected reply type " +
                                            std::to_string(static_cast<int>(got)) + " to " + what);
    }
  }

  TcpBootstrapOptions options_;
  asio::io_context io_;
  tcp::socket socket_{io_};
};

TcpStoreClient::TcpStoreClient(const TcpBootstrapOptions& options)
    : impl_(std::make_unique<Impl>(options)) {}

TcpStoreClient::~TcpStoreClient() = default;

void TcpStoreClient::set(std::string_view key, std::span<const std::byte> value) {
  impl_->set(key, value);
}

std::vector<std::byte> TcpStoreClient::get(std::string_view key) {
  return impl_->get(key);
}

}  // namespace frugal
