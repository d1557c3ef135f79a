// File helpers: whole-file reads with clear errors, durable atomic writes, and outputs that are
// checked against the run's inputs, locked for the whole run, and appear under their final name
// only when complete (docs/cli.md "Outputs and your files").
#pragma once

#include <cstdio>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/core/interrupt.h"
#include "quant/core/json.h"

namespace quant {

namespace fs = std::filesystem;

// Reads a whole regular file (FIFOs and devices are refused before open(), so nothing blocks).
// `allow_stream`: also read a pipe or character device (a text given as <(zcat ...)).
std::string read_text_file(const fs::path& path, bool allow_stream = false);
// read_text_file + parse_json, errors naming the file.
nlohmann::json read_json_file(const fs::path& path, const JsonLimits& limits = {});

// Writes `content` to `path` through `<path>.tmp`, fsync and rename (and fsync of the
// directory). Throws IoError (removing the temporary) when any write fails, e.g. on a full disk.
void write_file_atomic(const fs::path& path, const std::string& content);
// fsync of a file or directory; IoError on failure (EINVAL/EROFS — pipes, devices — ignored).
void sync_path(const fs::path& path);

// A FILE* that throws IoError naming the file on any failed write, and removes the file on
// destruction unless released. "-" is stdout; a character device or FIFO is written in place
// and never removed.
class OutFile {
 public:
  explicit OutFile(fs::path path);
  ~OutFile();
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;
  void write(const void* data, std::size_t n);
  // Appends the whole of `src` (copy_file_range; read/write where the kernel cannot).
  void append_file(const fs::path& src);
  void close(bool sync = true);  // flush, fsync (unless !sync), close; throws on error
  void keep() { keep_ = true; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  std::FILE* f_ = nullptr;
  bool keep_ = false;
  bool stream_ = false;
};

// Memory this process may still use: MemAvailable (/proc/meminfo), capped by a cgroup v2/v1
// limit less current usage; 0 when unknown.
std::uint64_t available_memory_bytes();
// Throws UsageError when `estimate` exceeds the available memory, naming `what`, both figures and
// the flag that skips the check (--no-memory-check). Does nothing when !enabled or unknown.
void check_memory_estimate(std::uint64_t estimate, const std::string& what, bool enabled);

// ---- outputs -----------------------------------------------------------------------------------

// What may be replaced, and what must never be touched.
// The first line of text reports quant writes (JUnit XML): --force may replace such a file.
inline constexpr const char* kQuantReportMarker = "<!-- written by quant eval -->";
// The first bytes of quant eval --save-logits files.
inline constexpr const char* kQuantBaseLogitsMagic = "QKLBASE1";

struct OutputPolicy {
  bool force = false;            // replace an existing output that quant wrote
  bool replace_foreign = false;  // with force: also replace an existing directory/file quant did not write
  std::vector<fs::path> inputs;  // every path the run reads (model, base, calibration, imatrix, ...)
};

enum class OutputKind { directory, file };

// The absolute path with symlinks of its existing part resolved and "." / ".." folded, so that
// "M/.", "sand/M/.." and a symlink to M all name what they really are.
fs::path resolve_output_path(const fs::path& path);
// "-", a character device or a FIFO: written in place, never replaced, not locked.
bool is_stream_target(const fs::path& path);
// A directory quant wrote (it carries quant_summary.json).
bool is_quant_output_dir(const fs::path& dir);
// The job id a complete quant output records (`job_id` in a directory's quant_summary.json, the
// `quant.job_id` key of a GGUF file; set by `quant run` for its jobs): "" when none or unreadable.
std::string quant_output_job_id(const fs::path& out);

// Refuses (UsageError) an output that equals, contains or lies inside one of the inputs — with
// the `.partial`, `.resume`, `.lock` and `.tmp` siblings quant writes beside it — and an existing
// output that is not replaceable: without force; with force, one quant did not write (unless
// replace_foreign); anything but a regular file or directory. Returns the resolved path.
fs::path check_output(const fs::path& out, OutputKind kind, const OutputPolicy& policy);
// The input part of check_output alone: UsageError when `out` (or a sibling quant writes beside
// it) equals, contains or lies inside one of `inputs`.
void check_output_inputs(const fs::path& out, const std::vector<fs::path>& inputs);
// Refuses two outputs of one run (or recipe) that are equal or nested.
void check_distinct_outputs(const std::vector<fs::path>& outputs, const std::string& what);

// An exclusive lock on an output and its journal for the whole run: `<out>.lock` beside it,
// holding "pid P on host H (since unix time T)". Two layers (docs/cluster.md):
// - flock(2): released by the kernel when the holder dies; Linux emulates it with fcntl locks
//   over NFS, so on a shared filesystem with working locks a second worker anywhere is refused.
// - the file as a claim with a heartbeat, for filesystems that keep locks per host (NFS mounted
//   `nolock`, Lustre `localflock`): the holder touches the file every kLockHeartbeatSeconds, and
//   the file is removed on release. A run that gets the flock but finds a claim from another host
//   whose heartbeat is younger than the stale limit (kLockStaleSeconds, or QUANT_LOCK_STALE_SECONDS)
//   is refused too; an older claim, or one from this host (whose holder the flock shows is dead),
//   is stale and taken over.
// A second run is refused (UsageError) with the holder named.
inline constexpr int kLockHeartbeatSeconds = 30;
inline constexpr int kLockStaleSeconds = 120;
class OutputLock {
 public:
  explicit OutputLock(const fs::path& out);
  ~OutputLock();
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;

 private:
  struct Heartbeat;
  fs::path path_;
  int fd_ = -1;
  std::unique_ptr<Heartbeat> heartbeat_;
};

// An output directory built at `<final>.partial/` and renamed to `<final>` by commit(), after
// an fsync of every file and of the directory. Construction checks the target against the
// policy and takes its OutputLock. Destroying an uncommitted one removes the partial directory.
class StagedDir {
 public:
  StagedDir(const fs::path& final_dir, const OutputPolicy& policy);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;
  const fs::path& path() const { return partial_; }
  const fs::path& final_path() const { return final_; }
  void commit();

 private:
  fs::path final_;
  fs::path partial_;
  OutputPolicy policy_;
  std::unique_ptr<OutputLock> lock_;
  bool committed_ = false;
};

// A single output file written through `<final>.tmp` (or in place for a stream target), locked
// and checked as StagedDir is; commit() fsyncs and renames.
class StagedFile {
 public:
  StagedFile(const fs::path& final_file, const OutputPolicy& policy);
  ~StagedFile();
  StagedFile(const StagedFile&) = delete;
  StagedFile& operator=(const StagedFile&) = delete;
  OutFile& file() { return *file_; }
  const fs::path& final_path() const { return final_; }
  void commit();

 private:
  fs::path final_;
  std::unique_ptr<OutputLock> lock_;
  std::unique_ptr<OutFile> file_;
  bool stream_ = false;
  bool committed_ = false;
};

}  // namespace quant
