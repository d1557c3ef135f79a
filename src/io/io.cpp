#include "quant/io/io.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/io/gguf.h"

namespace quant {

namespace {

const char* kind_of(mode_t m) {
  return S_ISFIFO(m) ? "FIFO" : S_ISCHR(m) ? "character device" : S_ISBLK(m) ? "block device" : S_ISDIR(m) ? "directory" : S_ISSOCK(m) ? "socket" : "special file";
}

}  // namespace

std::string read_text_file(const fs::path& path, bool allow_stream) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  const bool stream = S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode);
  if (!S_ISREG(st.st_mode) && !(allow_stream && stream)) {
    fail("{}: not a regular file (a {})", path.string(), kind_of(st.st_mode));
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  std::string out;
  if (S_ISREG(st.st_mode)) out.reserve(static_cast<std::size_t>(st.st_size));
  std::vector<char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) {
      if (interrupt_requested()) {
        ::close(fd);
        check_interrupted();
      }
      continue;
    }
    if (n < 0) {
      const int err = errno;
      ::close(fd);
      fail("{}: read failed: {}", path.string(), std::strerror(err));
    }
    if (n == 0) break;
    out.append(buf.data(), static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

nlohmann::json read_json_file(const fs::path& path, const JsonLimits& limits) {
  return parse_json(read_text_file(path), path.string(), limits);
}

void sync_path(const fs::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail<IoError>("{}: cannot open to sync: {}", path.string(), std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0 && err != EINVAL && err != EROFS) fail<IoError>("{}: fsync failed: {}", path.string(), std::strerror(err));
}

namespace {

void sync_parent(const fs::path& p) {
  const fs::path parent = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  sync_path(parent);
}

}  // namespace

OutFile::OutFile(fs::path path) : path_(std::move(path)) {
  stream_ = is_stream_target(path_);
  if (path_ == "-") {
    const int fd = ::dup(STDOUT_FILENO);
    f_ = fd >= 0 ? ::fdopen(fd, "wb") : nullptr;
  } else {
    f_ = std::fopen(path_.c_str(), "wb");
  }
  if (!f_) fail<IoError>("{}: cannot create: {}", path_.string(), std::strerror(errno));
}

OutFile::~OutFile() {
  if (f_) std::fclose(f_);
  if (!keep_ && !stream_) {
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
      if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EINVAL || errno == EOPNOTSUPP || errno == EBADF)) {
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
  if (!stream_) std::fseek(f_, 0, SEEK_END);  // the stream's idea of its position follows the descriptor
}

void OutFile::close(bool sync) {
  if (!f_) return;
  bool failed = std::fflush(f_) != 0;
  int err = errno;
  if (!failed && sync && !stream_ && ::fsync(fileno(f_)) != 0 && errno != EINVAL && errno != EROFS) {
    failed = true;
    err = errno;
  }
  const bool close_failed = std::fclose(f_) != 0;
  if (!failed && close_failed) err = errno;
  f_ = nullptr;
  if (failed || close_failed) fail<IoError>("{}: write failed: {}", path_.string(), std::strerror(err));
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
  sync_parent(path);
}

namespace {

std::uint64_t read_number(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_regular_file(p, ec)) return 0;
  try {
    const std::string s = read_text_file(p);
    if (s.empty() || !std::isdigit(static_cast<unsigned char>(s[0]))) return 0;  // "max"
    return std::stoull(s);
  } catch (const std::exception&) {
    return 0;
  }
}

}  // namespace

std::uint64_t available_memory_bytes() {
  std::uint64_t avail = 0;
  try {
    const std::string info = read_text_file("/proc/meminfo");
    const auto at = info.find("MemAvailable:");
    if (at != std::string::npos) avail = std::stoull(info.substr(at + 13)) * 1024;
  } catch (const std::exception&) {
  }
  for (const auto& [limit_file, usage_file] : {std::pair{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"},
                                               {"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"}}) {
    const std::uint64_t limit = read_number(limit_file);
    if (limit == 0 || limit > (std::uint64_t{1} << 60)) continue;
    const std::uint64_t used = read_number(usage_file);
    const std::uint64_t left = limit > used ? limit - used : 0;
    avail = avail == 0 ? left : std::min(avail, left);
  }
  return avail;
}

void check_memory_estimate(std::uint64_t estimate, const std::string& what, bool enabled) {
  if (!enabled) return;
  const std::uint64_t avail = available_memory_bytes();
  if (avail == 0 || estimate <= avail) return;
  fail<UsageError>("{} needs about {:.1f} GB of memory but {:.1f} GB is available; lower it, or pass --no-memory-check to try anyway",
                   what, static_cast<double>(estimate) / 1e9, static_cast<double>(avail) / 1e9);
}

// ---- outputs -----------------------------------------------------------------------------------

namespace {

const char* const kWrittenBeside[] = {"", ".partial", ".resume", ".lock", ".tmp", ".awq-scaled", ".replaced"};

fs::path resolved(const fs::path& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(fs::absolute(p), ec);
  if (ec) r = fs::absolute(p).lexically_normal();
  while (!r.empty() && !r.has_filename() && r != r.root_path()) r = r.parent_path();
  return r;
}

// `child` is `parent` or lies under it (component-wise).
bool within(const fs::path& child, const fs::path& parent) {
  auto c = child.begin();
  for (auto p = parent.begin(); p != parent.end(); ++p, ++c) {
    if (p->empty()) continue;
    if (c == child.end() || *c != *p) return false;
  }
  return true;
}

bool is_quant_gguf(const fs::path& file) {
  {  // a text report quant wrote (eval --junit) starts with its marker within the first line or two
    std::ifstream in(file, std::ios::binary);
    std::string head(256, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<std::size_t>(in.gcount()));
    if (head.find(kQuantReportMarker) != std::string::npos) return true;
    if (head.rfind(kQuantBaseLogitsMagic, 0) == 0) return true;
  }
  try {
    const gguf::File g = gguf::File::open(file);
    const gguf::Value* v = g.find("general.quantized_by");
    return v && v->type == gguf::ValueType::STRING && v->s.rfind("quant ", 0) == 0;
  } catch (const Error&) {
    return false;
  }
}

}  // namespace

fs::path resolve_output_path(const fs::path& path) { return path == "-" ? path : resolved(path); }

bool is_stream_target(const fs::path& path) {
  if (path == "-") return true;
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && (S_ISCHR(st.st_mode) || S_ISFIFO(st.st_mode));
}

bool is_quant_output_dir(const fs::path& dir) { return fs::is_regular_file(dir / "quant_summary.json"); }

std::string quant_output_job_id(const fs::path& out) {
  std::error_code ec;
  try {
    if (fs::is_directory(out, ec)) {
      if (!is_quant_output_dir(out)) return "";
      const nlohmann::json j = read_json_file(out / "quant_summary.json");
      return j.is_object() && j.contains("job_id") && j["job_id"].is_string() ? j["job_id"].get<std::string>() : "";
    }
    if (!fs::is_regular_file(out, ec)) return "";
    const gguf::File g = gguf::File::open(out);
    const gguf::Value* v = g.find("quant.job_id");
    return v && v->type == gguf::ValueType::STRING ? v->s : "";
  } catch (const Error&) {
    return "";
  }
}

void check_output_inputs(const fs::path& out, const std::vector<fs::path>& inputs) {
  const fs::path target = resolve_output_path(out);
  const bool stream = is_stream_target(target);
  for (const auto& input : inputs) {
    if (input.empty() || input == "-") continue;
    const fs::path in = resolved(input);
    for (const char* suffix : kWrittenBeside) {
      if (stream && *suffix) continue;
      const fs::path w = stream ? target : fs::path(target.string() + suffix);
      const std::string what = *suffix ? fmt::format("{} (written beside the output as {})", out.string(), w.string()) : out.string();
      if (w == in) fail<UsageError>("output {} is the input {}: refusing to overwrite an input", what, input.string());
      if (within(in, w)) fail<UsageError>("output {} would contain the input {}: refusing (replacing it would delete the input)", what, input.string());
      if (within(w, in) && fs::is_directory(in)) fail<UsageError>("output {} lies inside the input {}: write it elsewhere", what, input.string());
    }
  }
}

fs::path check_output(const fs::path& out, OutputKind kind, const OutputPolicy& policy) {
  if (out.empty()) fail<UsageError>("empty output path");
  const fs::path target = resolve_output_path(out);
  const bool stream = is_stream_target(target);
  if (stream && kind == OutputKind::directory) fail<UsageError>("{}: is a device or pipe; this output is a directory", out.string());
  check_output_inputs(out, policy.inputs);
  if (stream) return target;
  if (kind == OutputKind::file) {  // missing parent folders are created (as for directory outputs), under a folder
    fs::path p = target.parent_path();
    while (!p.empty() && !fs::exists(p) && p != p.parent_path()) p = p.parent_path();
    if (!p.empty() && !fs::is_directory(p)) fail<UsageError>("{}: {} is not a directory", out.string(), p.string());
  }
  struct stat st {};
  if (::lstat(target.c_str(), &st) != 0) return target;  // does not exist yet
  const bool is_dir = S_ISDIR(st.st_mode), is_file = S_ISREG(st.st_mode);
  if (kind == OutputKind::directory && !is_dir) {
    fail<UsageError>("{}: exists and is {} — quant replaces only directories it wrote", out.string(), is_file ? "a file" : fmt::format("a {}", kind_of(st.st_mode)));
  }
  if (kind == OutputKind::file && !is_file) {
    fail<UsageError>("{}: exists and is a {} — quant replaces only regular files", out.string(), kind_of(st.st_mode));
  }
  const char* noun = kind == OutputKind::directory ? "directory" : "file";
  if (!policy.force) fail<UsageError>("{}: output already exists (pass --force to replace a {} quant wrote)", out.string(), noun);
  const bool ours = kind == OutputKind::directory ? is_quant_output_dir(target) : is_quant_gguf(target);
  if (!ours && !policy.replace_foreign) {
    fail<UsageError>("{}: exists and was not written by quant ({}); --force replaces only quant's own outputs — pass --replace-foreign as well to replace it",
                     out.string(), kind == OutputKind::directory ? "no quant_summary.json" : "no general.quantized_by = quant");
  }
  return target;
}

void check_distinct_outputs(const std::vector<fs::path>& outputs, const std::string& what) {
  std::vector<fs::path> r;
  for (const auto& o : outputs) r.push_back(resolve_output_path(o));
  for (std::size_t i = 0; i < r.size(); ++i) {
    for (std::size_t j = 0; j < r.size(); ++j) {
      if (i == j || r[i] == "-" || r[j] == "-") continue;
      if (r[i] == r[j] && i < j) fail<UsageError>("{}: outputs {} and {} are the same path", what, outputs[i].string(), outputs[j].string());
      if (r[i] != r[j] && within(r[j], r[i])) {
        fail<UsageError>("{}: output {} lies inside output {} (writing one would delete the other)", what, outputs[j].string(), outputs[i].string());
      }
    }
  }
}

// Touches the lock file every kLockHeartbeatSeconds until stopped.
struct OutputLock::Heartbeat {
  std::mutex m;
  std::condition_variable cv;
  bool stop = false;
  std::thread thread;

  explicit Heartbeat(int fd) {
    thread = std::thread([this, fd] {
      std::unique_lock<std::mutex> lock(m);
      while (!cv.wait_for(lock, std::chrono::seconds(kLockHeartbeatSeconds), [this] { return stop; })) ::futimens(fd, nullptr);
    });
  }
  ~Heartbeat() {
    {
      std::lock_guard<std::mutex> lock(m);
      stop = true;
    }
    cv.notify_all();
    thread.join();
  }
};

namespace {

std::string this_host() {
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  return host;
}

// The claim a lock file holds ("pid P on host H (since …)"): its text and host, "" when empty.
std::pair<std::string, std::string> read_claim(int fd) {
  std::string text(256, '\0');
  const ssize_t n = ::pread(fd, text.data(), text.size(), 0);
  text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\0')) text.pop_back();
  std::string host;
  if (const auto at = text.find(" on host "); at != std::string::npos) {
    host = text.substr(at + 9);
    host = host.substr(0, host.find(' '));
  }
  return {text, host};
}

int stale_seconds() {
  const char* e = std::getenv("QUANT_LOCK_STALE_SECONDS");
  const int v = e ? std::atoi(e) : 0;
  return v > 0 ? v : kLockStaleSeconds;
}

}  // namespace

OutputLock::OutputLock(const fs::path& out) : path_(out.string() + ".lock") {
  std::error_code ec;
  if (!path_.parent_path().empty()) fs::create_directories(path_.parent_path(), ec);
  const std::string host = this_host();
  for (int attempt = 0; attempt < 10; ++attempt) {
    fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) fail<IoError>("{}: cannot create the output lock: {}", path_.string(), std::strerror(errno));
    if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string holder = read_claim(fd_).first;
      ::close(fd_);
      fd_ = -1;
      if (err == EWOULDBLOCK) {
        fail<UsageError>("{}: in use by {} (lock {}); wait for that run to finish or stop it", out.string(),
                         holder.empty() ? std::string("another quant run") : holder, path_.string());
      }
      fail<IoError>("{}: cannot lock: {}", path_.string(), std::strerror(err));
    }
    // The holder before us may have removed the file after we opened it: then our lock is on an
    // unlinked inode and a third run could lock a new file. Retry until the path is ours.
    struct stat a {}, b {};
    if (::fstat(fd_, &a) == 0 && ::stat(path_.c_str(), &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
      // A claim left in the file: its holder died without releasing (stale), or holds the file
      // from a host whose locks we do not see (alive while its heartbeat is fresh).
      const auto [holder, holder_host] = read_claim(fd_);
      const auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      const long long age = static_cast<long long>(now) - static_cast<long long>(a.st_mtim.tv_sec);
      if (!holder.empty() && !holder_host.empty() && holder_host != host && age < stale_seconds()) {
        ::close(fd_);
        fd_ = -1;
        fail<UsageError>("{}: in use by {} (lock {}, heartbeat {} s ago; this filesystem does not share locks between hosts); "
                         "wait for that run, or if it is dead, {} s after its last heartbeat the lock is stale",
                         out.string(), holder, path_.string(), std::max(0LL, age), stale_seconds());
      }
      if (!holder.empty()) log::warn("{}: taking over a stale lock ({})", path_.string(), holder);
      const std::string who = fmt::format("pid {} on host {} (since unix time {})\n", ::getpid(), host, static_cast<long long>(now));
      if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, who.data(), who.size(), 0) != static_cast<ssize_t>(who.size())) {
        // Naming the holder is a courtesy; the flock itself holds.
      }
      heartbeat_ = std::make_unique<Heartbeat>(fd_);
      return;
    }
    ::close(fd_);
    fd_ = -1;
  }
  fail<IoError>("{}: cannot lock: the lock file keeps being replaced", path_.string());
}

OutputLock::~OutputLock() {
  heartbeat_.reset();
  if (fd_ >= 0) {
    ::unlink(path_.c_str());
    ::close(fd_);
  }
}

StagedDir::StagedDir(const fs::path& final_dir, const OutputPolicy& policy) : policy_(policy) {
  final_ = check_output(final_dir, OutputKind::directory, policy);
  lock_ = std::make_unique<OutputLock>(final_);
  partial_ = final_.string() + ".partial";
  std::error_code ec;
  fs::remove_all(partial_, ec);  // left by a killed run (we hold the lock)
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
  for (const auto& e : fs::directory_iterator(partial_)) {
    if (e.is_regular_file()) sync_path(e.path());
  }
  sync_path(partial_);
  std::error_code ec;
  const fs::path old = final_.string() + ".replaced";
  bool replacing = false;
  if (fs::exists(fs::symlink_status(final_))) {
    check_output(final_, OutputKind::directory, policy_);  // still what we were allowed to replace
    fs::remove_all(old, ec);
    fs::rename(final_, old, ec);
    if (ec) fail<IoError>("{}: cannot move the old output aside: {}", final_.string(), ec.message());
    replacing = true;
  }
  fs::rename(partial_, final_, ec);
  if (ec) {
    if (replacing) fs::rename(old, final_, ec);
    fail<IoError>("{}: cannot rename into place: {}", final_.string(), ec.message());
  }
  committed_ = true;
  sync_parent(final_);
  if (replacing) fs::remove_all(old, ec);
}

StagedFile::StagedFile(const fs::path& final_file, const OutputPolicy& policy) {
  final_ = check_output(final_file, OutputKind::file, policy);
  stream_ = is_stream_target(final_);
  if (stream_) {
    file_ = std::make_unique<OutFile>(final_);
    return;
  }
  lock_ = std::make_unique<OutputLock>(final_);
  file_ = std::make_unique<OutFile>(final_.string() + ".tmp");
}

StagedFile::~StagedFile() = default;  // an uncommitted temporary is removed by OutFile

void StagedFile::commit() {
  file_->close();
  if (!stream_) {
    std::error_code ec;
    fs::rename(file_->path(), final_, ec);
    if (ec) fail<IoError>("{}: cannot rename into place: {}", final_.string(), ec.message());
    sync_parent(final_);
  }
  file_->keep();
  committed_ = true;
}

}  // namespace quant
