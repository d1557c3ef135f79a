// safetensors reading (memory-mapped, header validated as hostile input) and writing
// (streaming, optionally sharded like transformers, atomic by rename).
//
// File layout (https://github.com/huggingface/safetensors): u64 little-endian header length N,
// N bytes of UTF-8 JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__":
// {str: str}}, then the data region; offsets are relative to the data region's start.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "quant/core/dtype.h"

namespace quant {

namespace fs = std::filesystem;

// Upper bound on the JSON header, as the reference implementation enforces.
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t offset = 0;  // into the data region
  std::uint64_t nbytes = 0;
  std::int64_t numel() const;
};

// A read-only memory mapping of a whole file.
class MappedFile {
 public:
  explicit MappedFile(const fs::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

// One .safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const fs::path& path);
  const fs::path& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // in data order
  const TensorInfo* find(std::string_view name) const;
  std::span<const std::byte> bytes(const TensorInfo& info) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // Offset of the data region in the file.
  std::uint64_t data_start() const { return data_start_; }

 private:
  fs::path path_;
  std::shared_ptr<MappedFile> map_;
  std::uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::unordered_map<std::string, std::size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// The tensors of a checkpoint: one file, or the shards named by model.safetensors.index.json.
class TensorStore {
 public:
  // A directory (model.safetensors or model.safetensors.index.json) or a .safetensors file.
  static TensorStore open(const fs::path& path);

  bool contains(std::string_view name) const { return find(name) != nullptr; }
  const TensorInfo* find(std::string_view name) const;
  // Like find, but throws InputError naming the checkpoint when absent.
  const TensorInfo& get(std::string_view name) const;
  std::span<const std::byte> bytes(std::string_view name) const;
  // Converts a tensor to float (any stored dtype).
  std::vector<float> read_f32(std::string_view name) const;
  // Converts a tensor to float into `dst` (numel values), reading the file with pread in
  // chunks over threads rather than through the mapping: no page faults, nothing of the file
  // left resident, and a file truncated since it was opened is an error, not SIGBUS.
  void read_f32_into(std::string_view name, float* dst) const;
  // The tensor's stored bytes (nbytes of them) into `dst`, read the same way; a computed tensor
  // has none (throws). `scan`, when given, sees each chunk as it is read (dtype, bytes, element
  // count) and returns the index of the first element it flags (or the count); the result is the
  // tensor's first flagged element, or numel.
  using ChunkScan = std::size_t (*)(DType, const std::byte*, std::size_t);
  std::size_t read_bytes_into(std::string_view name, std::byte* dst, ChunkScan scan = nullptr) const;
  // Whether `name` is stored in a file (not computed when read).
  bool has_bytes(std::string_view name) const;
  // Path of the file holding `name`.
  const fs::path& file_of(std::string_view name) const;
  // All tensor names, sorted.
  std::vector<std::string> names() const;
  const std::vector<SafetensorsFile>& files() const { return files_; }
  const fs::path& source() const { return source_; }

  // A store of computed tensors, e.g. the weights of a GGUF file under their HF names,
  // dequantized when read: each is F32 to its readers, has no raw bytes (bytes() throws) and
  // lives in `source` (file_of). The reader writes numel floats.
  using Reader = std::function<void(float* dst)>;
  struct Computed {
    std::string name;
    std::vector<std::int64_t> shape;
    Reader read;
  };
  static TensorStore computed(const fs::path& source, std::vector<Computed> tensors);

 private:
  // read_f32_into (raw null) or read_bytes_into (dst null).
  std::size_t read_into(std::string_view name, float* dst, std::byte* raw, ChunkScan scan) const;
  fs::path source_;
  std::vector<SafetensorsFile> files_;
  std::unordered_map<std::string, std::pair<std::size_t, const TensorInfo*>> where_;
  // Computed tensors: where_ points into computed_infos_ with file index SIZE_MAX.
  std::vector<std::unique_ptr<TensorInfo>> computed_infos_;
  std::unordered_map<std::string, Reader> readers_;
};

struct WriterOptions {
  // Start a new shard when the current one would exceed this many data bytes (0: one file).
  // Names follow transformers: model-00001-of-00003.safetensors + model.safetensors.index.json.
  std::uint64_t max_shard_bytes = 0;
  std::string base_name = "model";
};

// Streams tensors into <dir>/model.safetensors (or shards). Data goes to temporary files as
// tensors arrive, so memory stays bounded by one tensor; finish() writes each final file under
// a temporary name and renames it into place. Destroying an unfinished writer removes its
// temporary files.
class SafetensorsWriter {
 public:
  SafetensorsWriter(fs::path dir, WriterOptions options = {},
                    std::map<std::string, std::string> metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
           std::span<const std::byte> data);
  // Converts floats to `dtype` (F32/F16/BF16/F64) and adds the tensor.
  void add_f32(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
               std::span<const float> data);
  template <typename T>
  void add_pod(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
               std::span<const T> data) {
    add(name, dtype, std::move(shape), std::as_bytes(data));
  }
  // Writes the final files, reads them back (headers, sizes, every tensor present with its
  // size; IoError if not) and returns their paths (shards, then the index if any).
  std::vector<fs::path> finish();
  std::uint64_t total_bytes() const { return total_bytes_; }
  // Called with every tensor as it is added (e.g. to journal it for resuming).
  std::function<void(const std::string& name, DType dtype, const std::vector<std::int64_t>& shape,
                     std::span<const std::byte> data)>
      on_add;

 private:
  struct Shard;
  void open_shard();
  fs::path dir_;
  WriterOptions options_;
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::map<std::string, std::uint64_t> names_;  // name → bytes
  std::uint64_t total_bytes_ = 0;
  bool finished_ = false;
};

}  // namespace quant
