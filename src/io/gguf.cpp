#include "quant/io/gguf.h"

#include <cstring>
#include <fstream>

#include "quant/core/error.h"

namespace quant::gguf {

namespace {

constexpr std::uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr std::uint32_t kVersion = 3;

const TypeInfo kTypes[] = {
    {"F32", 1, 4}, {"F16", 1, 2}, {"Q4_0", 32, 18}, {"Q4_1", 32, 20}, {nullptr, 0, 0}, {nullptr, 0, 0},
    {"Q5_0", 32, 22}, {"Q5_1", 32, 24}, {"Q8_0", 32, 34}, {nullptr, 0, 0}, {"Q2_K", 256, 84}, {"Q3_K", 256, 110},
    {"Q4_K", 256, 144}, {"Q5_K", 256, 176}, {"Q6_K", 256, 210}, {nullptr, 0, 0}, {nullptr, 0, 0}, {nullptr, 0, 0},
    {nullptr, 0, 0}, {nullptr, 0, 0}, {"IQ4_NL", 32, 18}, {nullptr, 0, 0}, {nullptr, 0, 0}, {"IQ4_XS", 256, 136}, {nullptr, 0, 0},
    {nullptr, 0, 0}, {nullptr, 0, 0}, {nullptr, 0, 0}, {nullptr, 0, 0}, {nullptr, 0, 0}, {"BF16", 1, 2},
};

std::size_t scalar_size(ValueType t) {
  switch (t) {
    case ValueType::UINT8: case ValueType::INT8: case ValueType::BOOL: return 1;
    case ValueType::UINT16: case ValueType::INT16: return 2;
    case ValueType::UINT32: case ValueType::INT32: case ValueType::FLOAT32: return 4;
    case ValueType::UINT64: case ValueType::INT64: case ValueType::FLOAT64: return 8;
    default: return 0;
  }
}

class Out {
 public:
  std::vector<std::uint8_t> buf;
  template <typename T>
  void pod(T v) {
    const std::size_t at = buf.size();
    buf.resize(at + sizeof(T));
    std::memcpy(buf.data() + at, &v, sizeof(T));
  }
  void str(const std::string& s) {
    pod<std::uint64_t>(s.size());
    buf.insert(buf.end(), s.begin(), s.end());
  }
  void value(const Value& v, ValueType t) {
    switch (t) {
      case ValueType::UINT8: pod<std::uint8_t>(static_cast<std::uint8_t>(v.u)); break;
      case ValueType::INT8: pod<std::int8_t>(static_cast<std::int8_t>(v.i)); break;
      case ValueType::UINT16: pod<std::uint16_t>(static_cast<std::uint16_t>(v.u)); break;
      case ValueType::INT16: pod<std::int16_t>(static_cast<std::int16_t>(v.i)); break;
      case ValueType::UINT32: pod<std::uint32_t>(static_cast<std::uint32_t>(v.u)); break;
      case ValueType::INT32: pod<std::int32_t>(static_cast<std::int32_t>(v.i)); break;
      case ValueType::FLOAT32: pod<float>(static_cast<float>(v.f)); break;
      case ValueType::BOOL: pod<std::uint8_t>(v.u ? 1 : 0); break;
      case ValueType::STRING: str(v.s); break;
      case ValueType::UINT64: pod<std::uint64_t>(v.u); break;
      case ValueType::INT64: pod<std::int64_t>(v.i); break;
      case ValueType::FLOAT64: pod<double>(v.f); break;
      case ValueType::ARRAY:
        pod<std::uint32_t>(static_cast<std::uint32_t>(v.elem));
        pod<std::uint64_t>(v.arr.size());
        for (const Value& e : v.arr) value(e, v.elem);
        break;
    }
  }
};

// Bounds-checked cursor over the file; every failure names the file and what was being read.
class In {
 public:
  In(const std::uint8_t* p, std::size_t n, const fs::path& path) : p_(p), n_(n), path_(path) {}
  template <typename T>
  T pod(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, p_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string str(const char* what) {
    const auto len = pod<std::uint64_t>(what);
    need(len, what);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), static_cast<std::size_t>(len));
    pos_ += static_cast<std::size_t>(len);
    return s;
  }
  Value value(ValueType t, const std::string& key, int depth = 0) {
    Value v;
    v.type = t;
    switch (t) {
      case ValueType::UINT8: v.u = pod<std::uint8_t>(key.c_str()); break;
      case ValueType::INT8: v.i = pod<std::int8_t>(key.c_str()); break;
      case ValueType::UINT16: v.u = pod<std::uint16_t>(key.c_str()); break;
      case ValueType::INT16: v.i = pod<std::int16_t>(key.c_str()); break;
      case ValueType::UINT32: v.u = pod<std::uint32_t>(key.c_str()); break;
      case ValueType::INT32: v.i = pod<std::int32_t>(key.c_str()); break;
      case ValueType::FLOAT32: v.f = pod<float>(key.c_str()); break;
      case ValueType::BOOL: {
        const auto b = pod<std::uint8_t>(key.c_str());
        if (b > 1) fail("{}: metadata '{}': boolean byte {} is neither 0 nor 1", path_.string(), key, b);
        v.u = b;
        break;
      }
      case ValueType::STRING: v.s = str(key.c_str()); break;
      case ValueType::UINT64: v.u = pod<std::uint64_t>(key.c_str()); break;
      case ValueType::INT64: v.i = pod<std::int64_t>(key.c_str()); break;
      case ValueType::FLOAT64: v.f = pod<double>(key.c_str()); break;
      case ValueType::ARRAY: {
        if (depth > 0) fail("{}: metadata '{}': nested arrays are not supported", path_.string(), key);
        const auto et = pod<std::uint32_t>(key.c_str());
        if (et > static_cast<std::uint32_t>(ValueType::FLOAT64)) fail("{}: metadata '{}': unknown array element type {}", path_.string(), key, et);
        v.elem = static_cast<ValueType>(et);
        const auto n = pod<std::uint64_t>(key.c_str());
        // Every element takes at least one byte (a string at least 8): a count the rest of the
        // file cannot hold is a lie, refused before allocating anything.
        const std::size_t min_size = v.elem == ValueType::STRING ? 8 : std::max<std::size_t>(scalar_size(v.elem), 1);
        if (n > (n_ - pos_) / min_size) fail("{}: metadata '{}': array of {} elements does not fit in the file", path_.string(), key, n);
        v.arr.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(n, 1 << 16)));
        for (std::uint64_t i = 0; i < n; ++i) v.arr.push_back(value(v.elem, key, depth + 1));
        break;
      }
      default:
        fail("{}: metadata '{}': unknown value type {}", path_.string(), key, static_cast<std::uint32_t>(t));
    }
    return v;
  }
  std::size_t pos() const { return pos_; }

 private:
  void need(std::uint64_t k, const char* what) {
    if (k > n_ - pos_) fail("{}: truncated GGUF file while reading {} (offset {}, {} bytes left)", path_.string(), what, pos_, n_ - pos_);
  }
  const std::uint8_t* p_;
  std::size_t n_;
  std::size_t pos_ = 0;
  const fs::path& path_;
};

std::uint64_t align_up(std::uint64_t x, std::uint64_t a) { return (x + a - 1) / a * a; }

}  // namespace

const TypeInfo* type_info(std::uint32_t type) {
  if (type >= sizeof(kTypes) / sizeof(kTypes[0]) || kTypes[type].name == nullptr) return nullptr;
  return &kTypes[type];
}

const TypeInfo& type_info(GgmlType type) { return *type_info(static_cast<std::uint32_t>(type)); }

std::optional<GgmlType> parse_type(const std::string& name) {
  std::string up;
  for (char c : name) up += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  for (std::uint32_t t = 0; t < sizeof(kTypes) / sizeof(kTypes[0]); ++t) {
    if (kTypes[t].name && up == kTypes[t].name) return static_cast<GgmlType>(t);
  }
  return std::nullopt;
}

std::uint64_t data_bytes(GgmlType type, std::int64_t n) {
  const TypeInfo& ti = type_info(type);
  if (n % ti.block != 0) fail<Error>("{} elements are not a whole number of {} blocks of {}", n, ti.name, ti.block);
  return static_cast<std::uint64_t>(n / ti.block * ti.bytes);
}

std::int64_t TensorInfo::numel() const {
  std::int64_t n = 1;
  for (auto d : ne) n *= d;
  return n;
}

std::string Value::to_string(std::size_t max_items) const {
  switch (type) {
    case ValueType::STRING: return "\"" + s + "\"";
    case ValueType::FLOAT32: case ValueType::FLOAT64: return fmt::format("{:g}", f);
    case ValueType::BOOL: return u ? "true" : "false";
    case ValueType::INT8: case ValueType::INT16: case ValueType::INT32: case ValueType::INT64: return std::to_string(i);
    case ValueType::ARRAY: {
      std::string r = "[";
      for (std::size_t k = 0; k < arr.size() && k < max_items; ++k) r += (k ? ", " : "") + arr[k].to_string(max_items);
      if (arr.size() > max_items) r += fmt::format(", … ({} items)", arr.size());
      return r + "]";
    }
    default: return std::to_string(u);
  }
}

const Value* Writer::find(const std::string& key) const {
  for (const auto& [k, v] : kv_) {
    if (k == key) return &v;
  }
  return nullptr;
}

void Writer::set(const std::string& key, Value v) {
  if (key == "general.alignment") alignment_ = v.u;
  for (auto& [k, old] : kv_) {
    if (k == key) {
      old = std::move(v);
      return;
    }
  }
  kv_.emplace_back(key, std::move(v));
}

void Writer::add_tensor(const std::string& name, const std::vector<std::int64_t>& shape, GgmlType type) {
  TensorInfo t;
  t.name = name;
  t.ne.assign(shape.rbegin(), shape.rend());
  t.type = type;
  if (t.ne[0] % type_info(type).block != 0) {
    fail<Error>("tensor '{}': rows of {} cannot be stored as {} (blocks of {})", name, t.ne[0], type_info(type).name, type_info(type).block);
  }
  t.bytes = data_bytes(type, t.numel());
  t.offset = tensors_.empty() ? 0 : align_up(tensors_.back().offset + tensors_.back().bytes, alignment_);
  tensors_.push_back(std::move(t));
}

std::uint64_t Writer::file_size() const {
  const std::uint64_t data = tensors_.empty() ? 0 : tensors_.back().offset + tensors_.back().bytes;
  return align_up(header().size(), alignment_) + data;
}

std::vector<std::uint8_t> Writer::header() const {
  Out h;
  h.pod<std::uint32_t>(kMagic);
  h.pod<std::uint32_t>(kVersion);
  h.pod<std::uint64_t>(tensors_.size());
  h.pod<std::uint64_t>(kv_.size());
  for (const auto& [k, v] : kv_) {
    h.str(k);
    h.pod<std::uint32_t>(static_cast<std::uint32_t>(v.type));
    h.value(v, v.type);
  }
  for (const auto& t : tensors_) {
    h.str(t.name);
    h.pod<std::uint32_t>(static_cast<std::uint32_t>(t.ne.size()));
    for (auto d : t.ne) h.pod<std::uint64_t>(static_cast<std::uint64_t>(d));
    h.pod<std::uint32_t>(static_cast<std::uint32_t>(t.type));
    h.pod<std::uint64_t>(t.offset);
  }
  h.buf.resize(align_up(h.buf.size(), alignment_), 0);
  return h.buf;
}

void Writer::write(const fs::path& path, const std::function<std::vector<std::uint8_t>(std::size_t)>& produce) {
  const std::vector<std::uint8_t> head = header();
  const fs::path tmp = path.string() + ".tmp";
  OutFile f(tmp);
  write_to(f, head, produce);
  f.close();
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) fail<IoError>("{}: cannot rename into place: {}", path.string(), ec.message());
  f.keep();
}

void Writer::write_to(OutFile& f, const std::function<std::vector<std::uint8_t>(std::size_t)>& produce) {
  write_to(f, header(), produce);
}

void Writer::write_to(OutFile& f, const std::vector<std::uint8_t>& head, const std::function<std::vector<std::uint8_t>(std::size_t)>& produce) {
  f.write(head.data(), head.size());
  std::uint64_t pos = 0;
  const std::vector<std::uint8_t> zeros(alignment_, 0);
  for (std::size_t i = 0; i < tensors_.size(); ++i) {
    const TensorInfo& t = tensors_[i];
    f.write(zeros.data(), t.offset - pos);
    const std::vector<std::uint8_t> bytes = produce(i);
    if (bytes.size() != t.bytes) fail<Error>("tensor '{}': produced {} bytes, expected {}", t.name, bytes.size(), t.bytes);
    f.write(bytes.data(), bytes.size());
    pos = t.offset + t.bytes;
  }
}

bool is_gguf_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  std::uint32_t magic = 0;
  return in.read(reinterpret_cast<char*>(&magic), 4) && magic == kMagic;
}

File File::open(const fs::path& path) {
  File g;
  g.path_ = path;
  g.map_ = std::make_shared<const MappedFile>(path);
  const auto* p = reinterpret_cast<const std::uint8_t*>(g.map_->data());
  const std::size_t n = g.map_->size();
  In in(p, n, g.path_);
  if (n < 4 || in.pod<std::uint32_t>("the magic") != kMagic) fail("{}: not a GGUF file (bad magic)", path.string());
  g.version = in.pod<std::uint32_t>("the version");
  if (g.version != 2 && g.version != 3) fail("{}: GGUF version {} is not supported (2 or 3)", path.string(), g.version);
  const auto n_tensors = in.pod<std::uint64_t>("the tensor count");
  const auto n_kv = in.pod<std::uint64_t>("the metadata count");
  if (n_kv > n / 13) fail("{}: {} metadata entries cannot fit in {} bytes", path.string(), n_kv, n);
  if (n_tensors > n / 28) fail("{}: {} tensors cannot fit in {} bytes", path.string(), n_tensors, n);
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    std::string key = in.str("a metadata key");
    for (const auto& [k, v] : g.metadata) {
      if (k == key) fail("{}: metadata key '{}' appears twice", path.string(), key);
    }
    const auto t = in.pod<std::uint32_t>("a metadata type");
    if (t > static_cast<std::uint32_t>(ValueType::FLOAT64)) fail("{}: metadata '{}': unknown value type {}", path.string(), key, t);
    Value v = in.value(static_cast<ValueType>(t), key);
    g.metadata.emplace_back(std::move(key), std::move(v));
  }
  if (const Value* a = g.find("general.alignment")) {
    if (a->type != ValueType::UINT32 || a->u == 0 || (a->u & (a->u - 1)) != 0) {
      fail("{}: general.alignment must be a power-of-two uint32", path.string());
    }
    g.alignment = a->u;
  }
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    TensorInfo t;
    t.name = in.str("a tensor name");
    const auto nd = in.pod<std::uint32_t>("a tensor's dimension count");
    if (nd == 0 || nd > 4) fail("{}: tensor '{}' has {} dimensions (1..4)", path.string(), t.name, nd);
    std::uint64_t numel = 1;
    for (std::uint32_t d = 0; d < nd; ++d) {
      const auto v = in.pod<std::uint64_t>("a tensor dimension");
      if (v == 0 || v > (std::uint64_t{1} << 40)) fail("{}: tensor '{}' has dimension {} = {}", path.string(), t.name, d, v);
      // Checked before multiplying: four dimensions of 2^40 would overflow.
      if (numel > (std::uint64_t{1} << 40) / v) fail("{}: tensor '{}' is implausibly large", path.string(), t.name);
      numel *= v;
      t.ne.push_back(static_cast<std::int64_t>(v));
    }
    const auto type = in.pod<std::uint32_t>("a tensor type");
    const TypeInfo* ti = type_info(type);
    if (!ti) fail("{}: tensor '{}' has ggml type {}, which quant does not read", path.string(), t.name, type);
    t.type = static_cast<GgmlType>(type);
    t.offset = in.pod<std::uint64_t>("a tensor offset");
    if (t.ne[0] % ti->block != 0) fail("{}: tensor '{}': {} elements per row are not whole {} blocks", path.string(), t.name, t.ne[0], ti->name);
    t.bytes = data_bytes(t.type, t.numel());
    if (t.offset % g.alignment != 0) fail("{}: tensor '{}' offset {} is not aligned to {}", path.string(), t.name, t.offset, g.alignment);
    for (const auto& o : g.tensors) {
      if (o.name == t.name) fail("{}: tensor '{}' appears twice", path.string(), t.name);
    }
    g.tensors.push_back(std::move(t));
  }
  g.data_start_ = align_up(in.pos(), g.alignment);
  for (const auto& t : g.tensors) {
    if (g.data_start_ > n || t.offset > n - g.data_start_ || t.bytes > n - g.data_start_ - t.offset) {
      fail("{}: tensor '{}' data (offset {}, {} bytes) runs past the end of the file", path.string(), t.name, t.offset, t.bytes);
    }
  }
  std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
  for (const auto& t : g.tensors) spans.emplace_back(t.offset, t.offset + t.bytes);
  std::sort(spans.begin(), spans.end());
  for (std::size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].first < spans[i - 1].second) fail("{}: tensor data regions overlap", path.string());
  }
  return g;
}

const Value* File::find(const std::string& key) const {
  for (const auto& [k, v] : metadata) {
    if (k == key) return &v;
  }
  return nullptr;
}

const TensorInfo& File::tensor(const std::string& name) const {
  for (const auto& t : tensors) {
    if (t.name == name) return t;
  }
  fail("{}: no tensor '{}'", path_.string(), name);
}

const std::uint8_t* File::data(const TensorInfo& t) const {
  return reinterpret_cast<const std::uint8_t*>(map_->data()) + data_start_ + t.offset;
}

}  // namespace quant::gguf
