// The TCP rendezvous store's server: one thread running a Boost.Asio io_context, one Session per
// connection. Everything below runs on that thread except the constructor and destructor, which
// talk to it through the io_context and a mutex-protected count of registered clients.

#include <array>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "asio.hpp"
#include "frugal/error.hpp"
#include "frugal/tcp_store.hpp"
#include "tcp_store_protocol.hpp"

namespace frugal {

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace bootstrap_wire;

namespace {

class Session;

}  // namespace

class TcpStoreServer::Impl {
 public:
  Impl(const StoreAddress& listen, int world_size, std::string token,
       std::chrono::milliseconds timeout, TcpStoreLimits limits);
  ~Impl();

  std::uint16_t port() const noexcept { return port_; }

  // Called on the io thread by sessions.
  void accept_next();
  // Throws Error for a hello the server must refuse.
  void register_client(int rank, int world_size, std::string_view token, std::uint32_t version);
  void unregister_client(int rank);
  void set(const std::string& key, std::span<const std::byte> value);
  // Replies now if the key exists, else when it is set.
  void get(const std::string& key, const std::shared_ptr<Session>& session);

  const TcpStoreLimits& limits() const noexcept { return limits_; }

 private:
  asio::io_context io_;
  tcp::acceptor acceptor_{io_};
  std::uint16_t port_ = 0;
  int world_size_;
  std::string token_;
  std::chrono::milliseconds timeout_;
  TcpStoreLimits limits_;

  std::map<std::string, std::vector<std::byte>, std::less<>> store_;
  std::size_t store_bytes_ = 0;
  std::map<std::string, std::vector<std::weak_ptr<Session>>, std::less<>> waiters_;
  std::vector<bool> rank_connected_;

  std::mutex mutex_;  // guards registered_ (read by the destructor's drain)
  std::condition_variable drained_;
  int registered_ = 0;

  std::thread thread_;
};

namespace {

// One client connection. Reads frames one at a time; writes are queued so that at most one
// async_write is in flight. A deadline timer runs while the client owes us bytes it has no
// reason to hold back: the handshake, and the rest of any frame it has started.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket socket, TcpStoreServer::Impl& server)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), server_(server) {}

  void start() {
    arm_timer();
    read_header();
  }

  void send(std::vector<std::byte> frame) {
    if (closed_) return;
    outbox_.push_back(std::move(frame));
    if (outbox_.size() == 1) write_next();
  }

  void send_value(std::span<const std::byte> value) {
    send(Writer(Type::Value).raw(value).finish());
  }

  // Replies with an error and closes once it is written.
  void refuse(ErrorCode code, const std::string& text) {
    send(Writer(Type::Error).u8(static_cast<std::uint8_t>(code)).raw(text).finish());
    close_after_write_ = true;
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    boost::system::error_code ignored;
    timer_.cancel(ignored);
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    if (rank_ >= 0) server_.unregister_client(rank_);
    rank_ = -1;
  }

 private:
  // On expiry the connection is dropped without a reply: a silent client may not even speak
  // the protocol. The generation makes a cancelled timer's late handler a no-op.
  void arm_timer() {
    const std::uint64_t generation = ++timer_generation_;
    timer_.expires_after(server_.limits().handshake_timeout);
    timer_.async_wait([self = shared_from_this(), generation](boost::system::error_code ec) {
      if (ec || generation != self->timer_generation_ || self->closed_) return;
      self->close();
    });
  }
  void disarm_timer() {
    ++timer_generation_;
    boost::system::error_code ignored;
    timer_.cancel(ignored);
  }

  void read_header() {
    asio::async_read(socket_, asio::buffer(header_),
                     [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                       if (ec) return self->close();
                       self->on_header();
                     });
  }

  void on_header() {
    const std::uint32_t length =
        decode_length(std::span<const std::byte, kHeaderBytes>(header_.data(), kHeaderBytes));
    const std::size_t limit = server_.limits().max_message_bytes;
    if (length == 0 || length > limit) {
      refuse(ErrorCode::InvalidArgument, "message of " + std::to_string(length) + " bytes " +
                                             (length == 0 ? std::string("is empty")
                                                          : "exceeds the store's limit of " +
                                                                std::to_string(limit) + " bytes"));
      return;
    }
    if (rank_ >= 0) arm_timer();  // it has started a frame: the rest must follow promptly
    body_.resize(length);
    asio::async_read(socket_, asio::buffer(body_),
                     [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                       if (ec) return self->close();
                       self->on_body();
                     });
  }

  void on_body() {
    const bool handshaken = rank_ >= 0;
    try {
      const ClientMessage m = parse_client_message(body_, handshaken);
      if (!handshaken) {
        server_.register_client(m.rank, m.world_size, m.token, m.version);
        rank_ = m.rank;
        disarm_timer();
        send(Writer(Type::Ok).finish());
      } else {
        disarm_timer();
        if (m.type == Type::Set) {
          server_.set(m.key, m.value);
          send(Writer(Type::Ok).finish());
        } else {
          server_.get(m.key, shared_from_this());
        }
      }
    } catch (const Error& e) {
      // Error::what() already starts with "frugal: <code>: "; send the part after it.
      const std::string text = e.what();
      const std::string prefix = "frugal: " + std::string(to_string(e.code())) + ": ";
      refuse(e.code(), text.rfind(prefix, 0) == 0 ? text.substr(prefix.size()) : text);
      return;
    }
    read_header();
  }

  void write_next() {
    asio::async_write(socket_, asio::buffer(outbox_.front()),
                      [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                        if (ec) return self->close();
                        self->outbox_.pop_front();
                        if (!self->outbox_.empty()) {
                          self->write_next();
                        } else if (self->close_after_write_) {
                          self->close();
                        }
                      });
  }

  tcp::socket socket_;
  asio::steady_timer timer_;
  TcpStoreServer::Impl& server_;
  std::array<std::byte, kHeaderBytes> header_{};
  std::vector<std::byte> body_;
  std::deque<std::vector<std::byte>> outbox_;
  std::uint64_t timer_generation_ = 0;
  int rank_ = -1;  // >= 0 once the hello was accepted
  bool closed_ = false;
  bool close_after_write_ = false;
};

}  // namespace

TcpStoreServer::Impl::Impl(const StoreAddress& listen, int world_size, std::string token,
                           std::chrono::milliseconds timeout, TcpStoreLimits limits)
    : world_size_(world_size),
      token_(std::move(token)),
      timeout_(timeout),
      limits_(limits),
      rank_connected_(static_cast<std::size_t>(world_size > 0 ? world_size : 0), false) {
  require(world_size >= 1, "world_size", "must be at least 1, got " + std::to_string(world_size));
  require(token_.size() <= kMaxTokenBytes, "token",
          "must be at most " + std::to_string(kMaxTokenBytes) + " bytes");
  require(limits_.max_message_bytes >= 64, "limits.max_message_bytes", "must be at least 64");
  const std::string where = listen.host + ":" + std::to_string(listen.port);
  boost::system::error_code ec;
  tcp::endpoint endpoint;
  if (const asio::ip::address address = asio::ip::make_address(listen.host, ec); !ec) {
    endpoint = tcp::endpoint(address, listen.port);
  } else {
    // A host name (e.g. "localhost"): listen on the first address it resolves to.
    tcp::resolver resolver(io_);
    const auto results = resolver.resolve(listen.host, std::to_string(listen.port), ec);
    if (ec || results.empty()) {
      throw Error(ErrorCode::InvalidArgument, "bootstrap store: cannot resolve '" + listen.host +
                                                  "' to listen on (FRUGAL_ADDR): " + ec.message());
    }
    endpoint = results.begin()->endpoint();
  }
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    throw Error(ErrorCode::Transport, "bootstrap store: cannot listen on " + where + ": " +
                                          ec.message() +
                                          " (set FRUGAL_ADDR to a free port on this host)");
  }
  port_ = acceptor_.local_endpoint().port();
  accept_next();
  thread_ = std::thread([this] { io_.run(); });
}

TcpStoreServer::Impl::~Impl() {
  {
    // Let registered clients read their last replies and hang up; bounded, so that a client
    // that never disconnects cannot keep rank 0 from exiting.
    std::unique_lock lock(mutex_);
    drained_.wait_for(lock, timeout_, [&] { return registered_ == 0; });
  }
  io_.stop();
  thread_.join();
}

void TcpStoreServer::Impl::accept_next() {
  acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted) return;
    if (!ec) {
      boost::system::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      std::make_shared<Session>(std::move(socket), *this)->start();
    }
    accept_next();
  });
}

void TcpStoreServer::Impl::register_client(int rank, int world_size, std::string_view token,
                                           std::uint32_t version) {
  if (version != kVersion) {
    throw Error(ErrorCode::Mismatch, "protocol version " + std::to_string(version) +
                                         " is not the server's " + std::to_string(kVersion));
  }
  if (!same_token(token_, token)) {
    throw Error(ErrorCode::Mismatch,
                "token does not match rank 0's (FRUGAL_TOKEN must be the same on every rank)");
  }
  if (world_size != world_size_) {
    throw Error(ErrorCode::Mismatch, "world size " + std::to_string(world_size) +
                                         " differs from rank 0's " + std::to_string(world_size_) +
                                         " (FRUGAL_WORLD_SIZE must be the same on every rank)");
  }
  if (rank < 0 || rank >= world_size_) {
    throw Error(ErrorCode::InvalidArgument, "rank " + std::to_string(rank) + " is outside 0.." +
                                                std::to_string(world_size_ - 1));
  }
  if (rank_connected_[static_cast<std::size_t>(rank)]) {
    throw Error(ErrorCode::Mismatch, "rank " + std::to_string(rank) +
                                         " is already connected (two processes with one "
                                         "FRUGAL_RANK?)");
  }
  rank_connected_[static_cast<std::size_t>(rank)] = true;
  std::lock_guard lock(mutex_);
  ++registered_;
}

void TcpStoreServer::Impl::unregister_client(int rank) {
  rank_connected_[static_cast<std::size_t>(rank)] = false;
  std::lock_guard lock(mutex_);
  --registered_;
  drained_.notify_all();
}

void TcpStoreServer::Impl::set(const std::string& key, std::span<const std::byte> value) {
  const auto it = store_.find(key);
  const std::size_t old_bytes = it == store_.end() ? 0 : key.size() + it->second.size();
  const std::size_t new_bytes = key.size() + value.size();
  if (store_bytes_ - old_bytes + new_bytes > limits_.max_store_bytes) {
    throw Error(ErrorCode::InvalidArgument,
                "store is full (limit " + std::to_string(limits_.max_store_bytes) + " bytes)");
  }
  store_bytes_ = store_bytes_ - old_bytes + new_bytes;
  auto& slot = store_[key];
  slot.assign(value.begin(), value.end());
  if (const auto w = waiters_.find(key); w != waiters_.end()) {
    for (const auto& weak : w->second) {
      if (const auto session = weak.lock()) session->send_value(slot);
    }
    waiters_.erase(w);
  }
}

void TcpStoreServer::Impl::get(const std::string& key, const std::shared_ptr<Session>& session) {
  if (const auto it = store_.find(key); it != store_.end()) {
    session->send_value(it->second);
  } else {
    waiters_[key].push_back(session);
  }
}

TcpStoreServer::TcpStoreServer(const StoreAddress& listen, int world_size, std::string token,
                               std::chrono::milliseconds timeout, TcpStoreLimits limits)
    : impl_(std::make_unique<Impl>(listen, world_size, std::move(token), timeout, limits)) {}

TcpStoreServer::~TcpStoreServer() = default;

std::uint16_t TcpStoreServer::port() const noexcept {
  return impl_->port();
}

}  // namespace frugal
