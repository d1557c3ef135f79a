// GGUF v3 container (ggml's file format, docs/formats.md): typed key/value metadata, tensor
// infos in ggml dimension order, aligned tensor data. A streaming writer and a validating reader.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant::gguf {

// ggml tensor types (the numbering is part of the file format).
enum class GgmlType : std::uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14,
  IQ4_NL = 20, IQ4_XS = 23, BF16 = 30,
};
struct TypeInfo {
  const char* name;
  std::int64_t block;  // elements per block
  std::int64_t bytes;  // bytes per block
};
// nullptr for a type quant does not know.
const TypeInfo* type_info(std::uint32_t type);
const TypeInfo& type_info(GgmlType type);
std::optional<GgmlType> parse_type(const std::string& name);  // "q4_0", "Q8_0", "f16", ...
// Bytes of `n` elements of `type`; throws when n is not a whole number of blocks.
std::uint64_t data_bytes(GgmlType type, std::int64_t n);

enum class ValueType : std::uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// One metadata value. Scalars keep their declared type; arrays hold elements of one type.
struct Value {
  ValueType type = ValueType::UINT32;
  std::uint64_t u = 0;  // unsigned integers and bool
  std::int64_t i = 0;   // signed integers
  double f = 0;         // floats
  std::string s;        // string
  ValueType elem = ValueType::UINT32;  // array element type
  std::vector<Value> arr;

  static Value u32(std::uint32_t v) { Value x; x.type = ValueType::UINT32; x.u = v; return x; }
  static Value i32(std::int32_t v) { Value x; x.type = ValueType::INT32; x.i = v; return x; }
  static Value f32(float v) { Value x; x.type = ValueType::FLOAT32; x.f = v; return x; }
  static Value boolean(bool v) { Value x; x.type = ValueType::BOOL; x.u = v; return x; }
  static Value str(std::string v) { Value x; x.type = ValueType::STRING; x.s = std::move(v); return x; }
  static Value array(ValueType elem, std::vector<Value> items) {
    Value x; x.type = ValueType::ARRAY; x.elem = elem; x.arr = std::move(items); return x;
  }
  std::string to_string(std::size_t max_items = 8) const;  // for inspect
};

struct TensorInfo {
  std::string name;
  std::vector<std::int64_t> ne;  // ggml order: ne[0] is the contiguous (row) dimension
  GgmlType type = GgmlType::F32;
  std::uint64_t offset = 0;      // from the start of the data section
  std::uint64_t bytes = 0;
  std::int64_t numel() const;
};

// Writes metadata and tensor infos first, then each tensor's bytes in order (streamed from the
// producer), to `<path>.tmp`, renamed to `path` when complete.
class Writer {
 public:
  void set(const std::string& key, Value v);
  const Value* find(const std::string& key) const;  // nullptr when not set
  // `shape` in row-major (PyTorch) order, outermost first; stored reversed as ggml ne.
  void add_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type);
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  // The size of the file write() would produce: header, padding and tensor data.
  std::uint64_t file_size() const;
  // produce(i) returns tensor i's bytes (exactly its size).
  void write(const fs::path& path, const std::function<std::vector<std::uint8_t>(std::size_t)>& produce);
  // The same into an open file (a StagedFile's, which renames and syncs it).
  void write_to(OutFile& f, const std::function<std::vector<std::uint8_t>(std::size_t)>& produce);

 private:
  std::vector<std::uint8_t> header() const;
  void write_to(OutFile& f, const std::vector<std::uint8_t>& head, const std::function<std::vector<std::uint8_t>(std::size_t)>& produce);

 public:

 private:
  std::vector<std::pair<std::string, Value>> kv_;
  std::vector<TensorInfo> tensors_;
  std::uint64_t alignment_ = 32;
};

// Whether `path` is a regular file that starts with the GGUF magic.
bool is_gguf_file(const fs::path& path);

// A GGUF file read and validated as hostile input (sizes, counts, offsets, types, alignment).
class File {
 public:
  static File open(const fs::path& path);
  std::uint32_t version = 0;
  std::uint64_t alignment = 32;
  std::vector<std::pair<std::string, Value>> metadata;  // in file order
  std::vector<TensorInfo> tensors;

  const Value* find(const std::string& key) const;
  const TensorInfo& tensor(const std::string& name) const;  // throws InputError
  const std::uint8_t* data(const TensorInfo& t) const;
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
  std::shared_ptr<const MappedFile> map_;
  std::uint64_t data_start_ = 0;
};

}  // namespace quant::gguf
