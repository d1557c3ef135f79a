// File helpers: whole-file reads with clear errors, atomic writes, and output directories that
// appear under their final name only when complete.
#pragma once

#include <cstdio>
#include <filesystem>
#include <string>

namespace quant {

namespace fs = std::filesystem;

std::string read_text_file(const fs::path& path);

// Writes `content` to `path` through `<path>.tmp` + rename. Throws IoError (removing the
// temporary) when any write fails, e.g. on a full disk.
void write_file_atomic(const fs::path& path, const std::string& content);

// A FILE* that throws IoError naming the file on any failed write, and removes the file on
// destruction unless released.
class OutFile {
 public:
  explicit OutFile(fs::path path);
  ~OutFile();
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;
  void write(const void* data, std::size_t n);
  // Appends the whole of `src` (copy_file_range; read/write where the kernel cannot).
  void append_file(const fs::path& src);
  void close();  // flush + fsync-free close; throws on error
  void keep() { keep_ = true; }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  std::FILE* f_ = nullptr;
  bool keep_ = false;
};

// Cooperative interruption. The tool's SIGINT/SIGTERM handler calls request_interrupt() (it is
// async-signal-safe: it only stores the signal and forwards it to a registered child process);
// long loops call check_interrupted() between units of work — a layer stage, a linear, an eval
// batch, a GGUF tensor — which throws Interrupted, so partial output is removed as for any
// error while a resume journal (written only at layer ends) stays usable.
void request_interrupt(int sig) noexcept;
void check_interrupted();
// The child process that request_interrupt forwards the signal to (0: none).
void set_interrupt_child(int pid) noexcept;

// An output directory built at `<final>.partial/` and renamed to `<final>` by commit().
// Destroying an uncommitted one removes the partial directory.
class StagedDir {
 public:
  // Throws UsageError if `final_dir` exists and !overwrite.
  StagedDir(fs::path final_dir, bool overwrite);
  ~StagedDir();
  StagedDir(const StagedDir&) = delete;
  StagedDir& operator=(const StagedDir&) = delete;
  const fs::path& path() const { return partial_; }
  const fs::path& final_path() const { return final_; }
  void commit();

 private:
  fs::path final_;
  fs::path partial_;
  bool overwrite_ = false;
  bool committed_ = false;
};

}  // namespace quant
