#include "atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <string>

#include "fault_injection.hpp"
#include "frugal/error.hpp"

namespace frugal::train {

namespace {

// Owns a file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const noexcept { return fd_; }
  // Closes now, reporting the error close() may carry (deferred write errors on some systems).
  int close() noexcept {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }

 private:
  int fd_;
};

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw Error(ErrorCode::InvalidArgument,
              what + " '" + path.string() + "': " + std::strerror(errno));
}

}  // namespace

void write_file_atomically(const std::filesystem::path& path, std::span<const std::byte> bytes,
                           std::string_view fault_point) {
  const std::filesystem::path dir = path.has_parent_path() ? path.parent_path() : ".";
  // Unique per process, so ranks writing different files into one directory never collide.
  std::string temp_name(1, '.');  // built piecewise: GCC 12's -Wrestrict false positive
  temp_name.append(path.filename().string()).append(".tmp.").append(std::to_string(::getpid()));
  const std::filesystem::path temp = dir / temp_name;
  const std::optional<std::size_t> crash_after =
      fault_point.empty() ? std::nullopt : fault_injection_bytes(fault_point);
  {
    Fd fd(::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
    if (fd.get() < 0) fail(temp, "cannot create");
    // With a crash point, stop there (a partial temporary file on disk) and die.
    const std::size_t end = crash_after ? std::min(bytes.size(), *crash_after) : bytes.size();
    std::size_t done = 0;
    while (true) {
      if (done == end) {
        if (crash_after) inject_fault_now();
        break;
      }
      const ssize_t n = ::write(fd.get(), bytes.data() + done, end - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int saved = errno;
        ::unlink(temp.c_str());
        errno = saved;
        fail(temp, "cannot write");
      }
      done += static_cast<std::size_t>(n);
    }
    if (::fsync(fd.get()) != 0 || fd.close() != 0) {
      const int saved = errno;
      ::unlink(temp.c_str());
      errno = saved;
      fail(temp, "cannot flush");
    }
  }
  if (::rename(temp.c_str(), path.c_str()) != 0) {
    const int saved = errno;
    ::unlink(temp.c_str());
    errno = saved;
    fail(path, "cannot rename the temporary file to");
  }
  // The rename itself is only durable once the directory entry is on disk.
  Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0 || ::fsync(dir_fd.get()) != 0) fail(dir, "cannot fsync directory");
}

std::vector<std::byte> read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, "cannot read");
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

}  // namespace frugal::train
