#include "quant/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "quant/core/error.h"
#include "quant/io/io.h"

namespace quant {

using nlohmann::json;

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

// ---------------------------------------------------------------------------------------------
MappedFile::MappedFile(const fs::path& path) {
  // O_NONBLOCK: a FIFO named as a shard must not block open() forever; it is refused below.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail("{}: cannot open: {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    fail("{}: cannot stat: {}", path.string(), std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file (a {}); model files must be regular files", path.string(),
         S_ISFIFO(st.st_mode) ? "FIFO" : S_ISCHR(st.st_mode) ? "character device" : S_ISDIR(st.st_mode) ? "directory" : "special file");
  }
  size_ = static_cast<std::size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      fail("{}: cannot map: {}", path.string(), std::strerror(errno));
    }
    data_ = static_cast<const std::byte*>(p);
  }
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
}

// ---------------------------------------------------------------------------------------------
namespace {

// Parses the header JSON in linear time with bounded depth, rejecting duplicate keys (nlohmann
// would keep the last).
json parse_header(const fs::path& path, std::string_view text) {
  const json header = parse_json(text, path.string() + ": safetensors header", JsonLimits{.max_depth = 8});
  if (!header.is_object()) fail("{}: safetensors header is not a JSON object", path.string());
  return header;
}

std::uint64_t checked_mul(std::uint64_t a, std::uint64_t b, const fs::path& path,
                          const std::string& name) {
  if (b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b) {
    fail("{}: tensor '{}': shape size overflows", path.string(), name);
  }
  return a * b;
}

TensorInfo parse_entry(const fs::path& path, const std::string& name, const json& entry) {
  const std::string where = fmt::format("{}: tensor '{}'", path.string(), name);
  if (!entry.is_object()) fail("{}: entry is not an object", where);
  TensorInfo info;
  info.name = name;
  auto dt = entry.find("dtype");
  if (dt == entry.end() || !dt->is_string()) fail("{}: missing dtype", where);
  auto parsed = parse_dtype(dt->get<std::string>());
  if (!parsed) {
    fail("{}: unsupported dtype '{}' (supported: F64 F32 F16 BF16 F8_E4M3 I64 I32 I16 I8 U8)", where,
         dt->get<std::string>());
  }
  info.dtype = *parsed;
  auto sh = entry.find("shape");
  if (sh == entry.end() || !sh->is_array()) fail("{}: missing shape", where);
  std::uint64_t numel = 1;
  for (const auto& d : *sh) {
    if (!d.is_number_integer() || d.get<std::int64_t>() < 0) {
      fail("{}: shape {} has a negative or non-integer dimension", where, sh->dump());
    }
    const auto v = d.get<std::int64_t>();
    numel = checked_mul(numel, static_cast<std::uint64_t>(v), path, name);
    info.shape.push_back(v);
  }
  const std::uint64_t expect = checked_mul(numel, dtype_size(info.dtype), path, name);
  auto off = entry.find("data_offsets");
  if (off == entry.end() || !off->is_array() || off->size() != 2 ||
      !(*off)[0].is_number_unsigned() || !(*off)[1].is_number_unsigned()) {
    fail("{}: data_offsets must be two non-negative integers", where);
  }
  const auto begin = (*off)[0].get<std::uint64_t>();
  const auto end = (*off)[1].get<std::uint64_t>();
  if (end < begin) fail("{}: data_offsets [{}, {}] end before they begin", where, begin, end);
  if (end - begin != expect) {
    fail("{}: shape {} × {} needs {} bytes but data_offsets span {}", where, sh->dump(),
         dtype_name(info.dtype), expect, end - begin);
  }
  info.offset = begin;
  info.nbytes = end - begin;
  return info;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path) {
  map_ = std::make_shared<MappedFile>(path);
  const std::size_t size = map_->size();
  if (size < 8) fail("{}: truncated safetensors file ({} bytes, header length needs 8)", path.string(), size);
  std::uint64_t n = 0;
  std::memcpy(&n, map_->data(), 8);  // little-endian host (x86-64)
  if (n > kMaxHeaderBytes || n > size - 8) {
    const auto* b = reinterpret_cast<const unsigned char*>(map_->data());
    bool text = true;
    for (int i = 0; i < 8; ++i) text = text && (std::isprint(b[i]) || std::isspace(b[i]));
    if (text) {
      fail("{}: not a safetensors file: it begins with text (\"{}\"), not an 8-byte header length", path.string(),
           std::string(reinterpret_cast<const char*>(b), 8));
    }
  }
  if (n > kMaxHeaderBytes) {
    fail("{}: safetensors header length {} exceeds the {} byte limit", path.string(), n, kMaxHeaderBytes);
  }
  if (n > size - 8) {
    fail("{}: safetensors header length {} runs past the end of the file ({} bytes)", path.string(), n, size);
  }
  data_start_ = 8 + n;
  const std::string_view text(reinterpret_cast<const char*>(map_->data()) + 8, n);
  if (text.empty() || text.front() != '{') fail("{}: safetensors header does not start with '{{'", path.string());
  json header = parse_header(path, text);

  const std::uint64_t data_size = size - data_start_;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) fail("{}: __metadata__ is not an object", path.string());
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) fail("{}: __metadata__ value '{}' is not a string", path.string(), m.key());
        metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    TensorInfo info = parse_entry(path, it.key(), *it);
    if (info.offset + info.nbytes > data_size) {
      fail("{}: tensor '{}': data_offsets [{}, {}] run past the end of the data ({} bytes)",
           path.string(), info.name, info.offset, info.offset + info.nbytes, data_size);
    }
    tensors_.push_back(std::move(info));
  }
  std::sort(tensors_.begin(), tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return a.offset != b.offset ? a.offset < b.offset : a.nbytes < b.nbytes;
  });
  for (std::size_t i = 1; i < tensors_.size(); ++i) {
    const auto& prev = tensors_[i - 1];
    if (tensors_[i].offset < prev.offset + prev.nbytes) {
      fail("{}: tensors '{}' and '{}' overlap in the data region", path.string(), prev.name,
           tensors_[i].name);
    }
  }
  for (std::size_t i = 0; i < tensors_.size(); ++i) index_[tensors_[i].name] = i;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> SafetensorsFile::bytes(const TensorInfo& info) const {
  return {map_->data() + data_start_ + info.offset, info.nbytes};
}

// ---------------------------------------------------------------------------------------------
TensorStore TensorStore::open(const fs::path& path) {
  TensorStore store;
  store.source_ = path;
  fs::path index_path;
  if (fs::is_directory(path)) {
    if (fs::exists(path / "model.safetensors.index.json")) {
      index_path = path / "model.safetensors.index.json";
    } else if (fs::exists(path / "model.safetensors")) {
      store.files_.emplace_back(path / "model.safetensors");
    } else {
      fail("{}: no model.safetensors or model.safetensors.index.json (only safetensors "
           "checkpoints are supported)", path.string());
    }
  } else if (path.extension() == ".json") {
    index_path = path;
  } else {
    store.files_.emplace_back(path);
  }

  if (!index_path.empty()) {
    const json index = read_json_file(index_path);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object()) {
      fail("{}: missing the 'weight_map' object", index_path.string());
    }
    std::map<std::string, std::size_t> file_ids;
    std::map<std::string, std::string> expected;  // tensor -> shard file
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it->is_string()) fail("{}: weight_map['{}'] is not a file name", index_path.string(), it.key());
      const std::string file = it->get<std::string>();
      if (file.find('/') != std::string::npos || file == ".." || file.empty()) {
        fail("{}: weight_map['{}'] names '{}', which is not a file beside the index",
             index_path.string(), it.key(), file);
      }
      expected[it.key()] = file;
      if (!file_ids.count(file)) {
        const fs::path shard = index_path.parent_path() / file;
        if (!fs::exists(shard)) {
          fail("{}: shard '{}' (holding '{}') is missing", index_path.string(), file, it.key());
        }
        file_ids[file] = store.files_.size();
        store.files_.emplace_back(shard);
      }
    }
    for (std::size_t f = 0; f < store.files_.size(); ++f) {
      for (const auto& t : store.files_[f].tensors()) {
        if (store.where_.count(t.name)) {
          fail("{}: tensor '{}' is stored in two shards ({} and {})", index_path.string(), t.name,
               store.files_[store.where_[t.name].first].path().filename().string(),
               store.files_[f].path().filename().string());
        }
        store.where_[t.name] = {f, &t};
      }
    }
    for (const auto& [name, file] : expected) {
      auto it = store.where_.find(name);
      if (it == store.where_.end()) {
        fail("{}: tensor '{}' is listed in shard '{}' but not stored there", index_path.string(), name, file);
      }
      if (store.files_[it->second.first].path().filename() != file) {
        fail("{}: tensor '{}' is listed in shard '{}' but stored in '{}'", index_path.string(), name,
             file, store.files_[it->second.first].path().filename().string());
      }
    }
    return store;
  }
  for (const auto& t : store.files_[0].tensors()) store.where_[t.name] = {0, &t};
  return store;
}

const TensorInfo* TensorStore::find(std::string_view name) const {
  auto it = where_.find(std::string(name));
  return it == where_.end() ? nullptr : it->second.second;
}

const TensorInfo& TensorStore::get(std::string_view name) const {
  const TensorInfo* t = find(name);
  if (!t) fail("{}: tensor '{}' not found", source_.string(), name);
  return *t;
}

TensorStore TensorStore::computed(const fs::path& source, std::vector<Computed> tensors) {
  TensorStore store;
  store.source_ = source;
  for (Computed& c : tensors) {
    auto info = std::make_unique<TensorInfo>();
    info->name = c.name;
    info->dtype = DType::F32;
    info->shape = c.shape;
    info->nbytes = static_cast<std::uint64_t>(info->numel()) * 4;
    if (!store.where_.emplace(c.name, std::make_pair(SIZE_MAX, info.get())).second) fail("{}: tensor '{}' appears twice", source.string(), c.name);
    store.readers_.emplace(c.name, std::move(c.read));
    store.computed_infos_.push_back(std::move(info));
  }
  return store;
}

std::span<const std::byte> TensorStore::bytes(std::string_view name) const {
  auto it = where_.find(std::string(name));
  if (it == where_.end()) fail("{}: tensor '{}' not found", source_.string(), name);
  if (it->second.first == SIZE_MAX) fail("{}: tensor '{}' is computed when read (it has no stored bytes)", source_.string(), name);
  return files_[it->second.first].bytes(*it->second.second);
}

std::vector<float> TensorStore::read_f32(std::string_view name) const {
  std::vector<float> out(static_cast<std::size_t>(get(name).numel()));
  read_f32_into(name, out.data());
  return out;
}

void TensorStore::read_f32_into(std::string_view name, float* dst) const { read_into(name, dst, nullptr, nullptr); }

std::size_t TensorStore::read_bytes_into(std::string_view name, std::byte* dst, ChunkScan scan) const {
  return read_into(name, nullptr, dst, scan);
}

bool TensorStore::has_bytes(std::string_view name) const {
  auto it = where_.find(std::string(name));
  return it != where_.end() && it->second.first != SIZE_MAX;
}

std::size_t TensorStore::read_into(std::string_view name, float* dst, std::byte* raw, ChunkScan scan) const {
  auto it = where_.find(std::string(name));
  if (it == where_.end()) fail("{}: tensor '{}' not found", source_.string(), name);
  if (it->second.first == SIZE_MAX) {
    if (raw) fail("{}: tensor '{}' is computed when read (it has no stored bytes)", source_.string(), name);
    readers_.at(it->first)(dst);
    return 0;
  }
  const SafetensorsFile& file = files_[it->second.first];
  const TensorInfo& t = *it->second.second;
  const std::size_t n = static_cast<std::size_t>(t.numel()), esize = dtype_size(t.dtype);
  if (n == 0) return 0;
  const int fd = ::open(file.path().c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("{}: cannot open: {}", file.path().string(), std::strerror(errno));
  constexpr std::size_t kChunk = std::size_t{1} << 18;  // elements per read
  const std::int64_t chunks = static_cast<std::int64_t>((n + kChunk - 1) / kChunk);
  const std::uint64_t base = file.data_start() + t.offset;
  const bool direct = raw || t.dtype == DType::F32;  // read straight into the destination
  int error = 0;  // errno of a failed read, -1 for end of file
  std::size_t flagged = n;  // the first element `scan` flagged
#pragma omp parallel if (chunks > 1 && !omp_in_parallel())
  {
    std::vector<std::byte> staging(direct ? 0 : kChunk * esize);
#pragma omp for schedule(static)
    for (std::int64_t c = 0; c < chunks; ++c) {
      const std::size_t i0 = static_cast<std::size_t>(c) * kChunk, m = std::min(kChunk, n - i0);
      std::byte* buf = raw ? raw + i0 * esize : t.dtype == DType::F32 ? reinterpret_cast<std::byte*>(dst + i0) : staging.data();
      std::size_t got = 0;
      while (got < m * esize) {
        const ssize_t r = ::pread(fd, buf + got, m * esize - got, static_cast<off_t>(base + i0 * esize + got));
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
#pragma omp critical(quant_read_error)
          error = r < 0 ? errno : -1;
          break;
        }
        got += static_cast<std::size_t>(r);
      }
      if (got == m * esize && !direct) convert_to_f32(t.dtype, buf, m, dst + i0);
      if (got == m * esize && scan) {  // while the chunk is in cache
        if (const std::size_t i = scan(t.dtype, buf, m); i < m) {
#pragma omp critical(quant_read_error)
          flagged = std::min(flagged, i0 + i);
        }
      }
    }
  }
  ::close(fd);
  if (error == -1) fail("{}: tensor '{}': the file ended early (truncated since it was opened?)", file.path().string(), name);
  if (error != 0) fail<IoError>("{}: tensor '{}': read failed: {}", file.path().string(), name, std::strerror(error));
  return flagged;
}

const fs::path& TensorStore::file_of(std::string_view name) const {
  auto it = where_.find(std::string(name));
  if (it == where_.end()) fail("{}: tensor '{}' not found", source_.string(), name);
  if (it->second.first == SIZE_MAX) return source_;
  return files_[it->second.first].path();
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& [k, v] : where_) out.push_back(k);
  std::sort(out.begin(), out.end());
  return out;
}

// ---------------------------------------------------------------------------------------------
struct SafetensorsWriter::Shard {
  fs::path data_path;
  std::unique_ptr<OutFile> data;
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::uint64_t bytes = 0;
};

SafetensorsWriter::SafetensorsWriter(fs::path dir, WriterOptions options,
                                     std::map<std::string, std::string> metadata)
    : dir_(std::move(dir)), options_(std::move(options)), metadata_(std::move(metadata)) {}

SafetensorsWriter::~SafetensorsWriter() = default;  // OutFile removes unfinished data files

void SafetensorsWriter::open_shard() {
  auto s = std::make_unique<Shard>();
  s->data_path = dir_ / fmt::format(".{}-{}.data.tmp", options_.base_name, shards_.size());
  s->data = std::make_unique<OutFile>(s->data_path);
  shards_.push_back(std::move(s));
}

void SafetensorsWriter::add(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
                            std::span<const std::byte> data) {
  if (finished_) fail<Error>("SafetensorsWriter::add after finish");
  if (names_.count(name)) fail<Error>("SafetensorsWriter: tensor '{}' added twice", name);
  if (on_add) on_add(name, dtype, shape, data);
  std::uint64_t numel = 1;
  for (auto d : shape) numel *= static_cast<std::uint64_t>(d);
  if (numel * dtype_size(dtype) != data.size()) {
    fail<Error>("SafetensorsWriter: tensor '{}' has {} bytes, shape needs {}", name, data.size(),
                numel * dtype_size(dtype));
  }
  if (shards_.empty() || (options_.max_shard_bytes > 0 && shards_.back()->bytes > 0 &&
                          shards_.back()->bytes + data.size() > options_.max_shard_bytes)) {
    open_shard();
  }
  Shard& s = *shards_.back();
  s.header[name] = {{"dtype", std::string(dtype_name(dtype))},
                    {"shape", shape},
                    {"data_offsets", {s.bytes, s.bytes + data.size()}}};
  s.data->write(data.data(), data.size());
  s.bytes += data.size();
  total_bytes_ += data.size();
  names_[name] = data.size();
}

void SafetensorsWriter::add_f32(const std::string& name, DType dtype,
                                std::vector<std::int64_t> shape, std::span<const float> data) {
  std::vector<std::byte> buf(data.size() * dtype_size(dtype));
  convert_from_f32(dtype, data, buf.data());
  add(name, dtype, std::move(shape), buf);
}

std::vector<fs::path> SafetensorsWriter::finish() {
  if (shards_.empty()) open_shard();
  finished_ = true;
  const std::size_t n = shards_.size();
  std::vector<fs::path> written;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (std::size_t i = 0; i < n; ++i) {
    Shard& s = *shards_[i];
    s.data->close(false);  // a temporary: the shard is synced
    const std::string file = n == 1 ? options_.base_name + ".safetensors"
                                    : fmt::format("{}-{:05d}-of-{:05d}.safetensors",
                                                  options_.base_name, i + 1, n);
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    for (auto it = s.header.begin(); it != s.header.end(); ++it) {
      header[it.key()] = it.value();
      weight_map[it.key()] = file;
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');  // data region starts 8-byte aligned
    const std::uint64_t len = text.size();

    const fs::path final_path = dir_ / file;
    OutFile out(final_path.string() + ".tmp");
    out.write(&len, 8);
    out.write(text.data(), text.size());
    out.append_file(s.data_path);
    out.close();
    std::error_code ec;
    fs::rename(out.path(), final_path, ec);
    if (ec) fail<IoError>("{}: cannot rename into place: {}", final_path.string(), ec.message());
    out.keep();
    s.data.reset();  // removes the temporary data file
    written.push_back(final_path);
  }
  if (n > 1) {
    nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes_}}},
                                    {"weight_map", weight_map}};
    const fs::path p = dir_ / (options_.base_name + ".safetensors.index.json");
    write_file_atomic(p, index.dump(2) + "\n");
    written.push_back(p);
  }
  // Read back what was written before anyone publishes it: a file another process truncated or
  // a short write the kernel did not report must not reach a user.
  try {
    const TensorStore back = TensorStore::open(n > 1 ? written.back() : written.front());
    for (const auto& [name, bytes] : names_) {
      if (!back.contains(name) || back.get(name).nbytes != bytes) fail<IoError>("tensor '{}' is missing or has the wrong size", name);
    }
    if (back.names().size() != names_.size()) fail<IoError>("{} tensors read back, {} written", back.names().size(), names_.size());
  } catch (const Error& e) {
    fail<IoError>("{}: the written checkpoint does not read back: {}", dir_.string(), e.what());
  }
  return written;
}

}  // namespace quant
