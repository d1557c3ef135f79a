#include "quant/io/io.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "quant/core/error.h"

namespace quant {

std::string read_text_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) fail("{}: read failed", path.string());
  return ss.str();
}

OutFile::OutFile(fs::path path) : path_(std::move(path)) {
  f_ = std::fopen(path_.c_str(), "wb");
  if (!f_) fail<IoError>("{}: cannot create: {}", path_.string(), std::strerror(errno));
}

OutFile::~OutFile() {
  if (f_) std::fclose(f_);
  if (!keep_) {
    std::error_code ec;
    fs::remove(path_, ec);
  }
}

void OutFile::write(const void* data, std::size_t n) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f_) != n) {
    fail<IoError>("{}: write failed: {}", path_.string(), std::strerror(errno));
  }
}

void OutFile::append_file(const fs::path& src) {
  if (std::fflush(f_) != 0) {
    fail<IoError>("{}: write failed: {}", path_.string(), std::strerror(errno));
  }
  const int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) fail<IoError>("{}: cannot open: {}", src.string(), std::strerror(errno));
  const int out = fileno(f_);
  // In-kernel copy (a clone where the filesystem can); plain read/write where it cannot.
  bool kernel_copy = true;
  std::vector<char> buf;
  for (;;) {
    ssize_t n = -1;
    if (kernel_copy) {
      n = ::copy_file_range(in, nullptr, out, nullptr, std::size_t{1} << 30, 0);
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP)) {
        kernel_copy = false;
        continue;
      }
    } else {
      if (buf.empty()) buf.resize(std::size_t{8} << 20);
      n = ::read(in, buf.data(), buf.size());
      for (ssize_t done = 0; n > 0 && done < n;) {
        const ssize_t w = ::write(out, buf.data() + done, static_cast<std::size_t>(n - done));
        if (w < 0) {
          if (errno == EINTR) continue;
          n = -1;
          break;
        }
        done += w;
      }
    }
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(in);
      fail<IoError>("{}: write failed: {}", path_.string(), std::strerror(err));
    }
  }
  ::close(in);
  std::fseek(f_, 0, SEEK_END);  // the stream's idea of its position follows the descriptor
}

void OutFile::close() {
  if (!f_) return;
  const bool flush_failed = std::fflush(f_) != 0;
  const int err = errno;
  const bool close_failed = std::fclose(f_) != 0;
  f_ = nullptr;
  if (flush_failed || close_failed) {
    fail<IoError>("{}: write failed: {}", path_.string(), std::strerror(flush_failed ? err : errno));
  }
}

void write_file_atomic(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.string() + ".tmp";
  OutFile out(tmp);
  out.write(content.data(), content.size());
  out.close();
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail<IoError>("{}: cannot rename into place: {}", path.string(), ec.message());
  out.keep();
}

namespace {
volatile std::sig_atomic_t g_interrupt_signal = 0;
volatile std::sig_atomic_t g_interrupt_child = 0;
}  // namespace

void request_interrupt(int sig) noexcept {
  g_interrupt_signal = sig;
  if (g_interrupt_child > 0) ::kill(static_cast<pid_t>(g_interrupt_child), sig);
}

void set_interrupt_child(int pid) noexcept { g_interrupt_child = pid; }

void check_interrupted() {
  // Fault injection for the interruption tests: SIGTERM to ourselves at the Nth check.
  static const long fault_at = [] {
    const char* e = std::getenv("QUANT_FAULT_SIGTERM_AT");
    return e ? std::atol(e) : 0L;
  }();
  static std::atomic<long> calls = 0;
  if (fault_at > 0 && ++calls == fault_at) std::raise(SIGTERM);
  if (const int sig = g_interrupt_signal) {
    throw Interrupted(fmt::format("interrupted by {}: stopped and removed the partial output", sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"));
  }
}

StagedDir::StagedDir(fs::path final_dir, bool overwrite)
    : final_(std::move(final_dir)), overwrite_(overwrite) {
  while (!final_.empty() && !final_.has_filename()) final_ = final_.parent_path();
  partial_ = final_.string() + ".partial";
  if (fs::exists(final_) && !overwrite_) {
    fail<UsageError>("{}: output already exists (pass --force to overwrite)", final_.string());
  }
  std::error_code ec;
  fs::remove_all(partial_, ec);
  fs::create_directories(partial_, ec);
  if (ec) fail<IoError>("{}: cannot create directory: {}", partial_.string(), ec.message());
}

StagedDir::~StagedDir() {
  if (!committed_) {
    std::error_code ec;
    fs::remove_all(partial_, ec);
  }
}

void StagedDir::commit() {
  std::error_code ec;
  if (fs::exists(final_)) {
    if (!overwrite_) fail<UsageError>("{}: output already exists", final_.string());
    fs::remove_all(final_, ec);
    if (ec) fail<IoError>("{}: cannot replace: {}", final_.string(), ec.message());
  }
  fs::rename(partial_, final_, ec);
  if (ec) fail<IoError>("{}: cannot rename into place: {}", final_.string(), ec.message());
  committed_ = true;
}

}  // namespace quant
