#include "quant/formats/imatrix.h"

#include <cmath>
#include <cstring>

#include "quant/core/error.h"
#include "quant/io/gguf.h"

namespace quant::gguf {

namespace {

Imatrix read_gguf(const fs::path& path) {
  const File f = File::open(path);
  const Value* kind = f.find("general.type");
  if (!kind || kind->s != "imatrix") fail("{}: not an imatrix file (general.type is not \"imatrix\")", path.string());
  Imatrix m;
  if (const Value* d = f.find("imatrix.datasets"); d && d->type == ValueType::ARRAY && d->elem == ValueType::STRING) {
    for (const Value& s : d->arr) m.datasets.push_back(s.s);
  }
  auto u32 = [&](const char* key) -> std::int64_t {
    const Value* v = f.find(key);
    return v && (v->type == ValueType::UINT32 || v->type == ValueType::UINT64) ? static_cast<std::int64_t>(v->u) : 0;
  };
  m.chunk_count = u32("imatrix.chunk_count");
  m.chunk_size = u32("imatrix.chunk_size");
  const std::string suffix = ".in_sum2";
  for (const TensorInfo& t : f.tensors) {
    if (!t.name.ends_with(suffix) || t.name.size() == suffix.size()) continue;
    const std::string name = t.name.substr(0, t.name.size() - suffix.size());
    const TensorInfo& c = f.tensor(name + ".counts");
    if (t.type != GgmlType::F32 || c.type != GgmlType::F32 || t.ne.size() != 1 || c.numel() != 1) {
      fail("{}: tensor '{}': expected a 1-D F32 in_sum2 and one F32 count (per-expert imatrices are not supported)", path.string(), name);
    }
    ImatrixEntry e;
    float count;
    std::memcpy(&count, f.data(c), 4);
    if (!(count > 0) || !std::isfinite(count)) fail("{}: tensor '{}' has count {}", path.string(), name, count);
    e.count = count;
    e.sum2.resize(static_cast<std::size_t>(t.numel()));
    std::memcpy(e.sum2.data(), f.data(t), e.sum2.size() * 4);
    m.entries[name] = std::move(e);
  }
  return m;
}

// The legacy format, read as llama-quantize's load_imatrix does (c392e50), with every length
// checked against the file.
Imatrix read_dat(const fs::path& path) {
  const std::string raw = read_text_file(path);
  std::size_t p = 0;
  auto i32 = [&](const char* what) {
    if (raw.size() - p < 4) fail("{}: truncated legacy imatrix (reading {} at byte {})", path.string(), what, p);
    std::int32_t v;
    std::memcpy(&v, raw.data() + p, 4);
    p += 4;
    return v;
  };
  Imatrix m;
  m.legacy = true;
  const std::int32_t n = i32("the entry count");
  if (n < 1) fail("{}: not an imatrix file (GGUF or legacy .dat): entry count {}", path.string(), n);
  for (std::int32_t i = 0; i < n; ++i) {
    const std::int32_t len = i32("a name length");
    if (len < 1 || static_cast<std::size_t>(len) > raw.size() - p) fail("{}: entry {}: name length {} runs past the file", path.string(), i, len);
    std::string name = raw.substr(p, static_cast<std::size_t>(len));
    p += static_cast<std::size_t>(len);
    const std::int32_t ncall = i32("ncall");
    const std::int32_t nval = i32("nval");
    if (nval < 1 || static_cast<std::size_t>(nval) > (raw.size() - p) / 4) fail("{}: entry '{}': {} values run past the file", path.string(), name, nval);
    if (ncall < 1) fail("{}: entry '{}' has ncall {}", path.string(), name, ncall);
    ImatrixEntry e;
    e.count = ncall;
    e.sum2.resize(static_cast<std::size_t>(nval));
    std::memcpy(e.sum2.data(), raw.data() + p, e.sum2.size() * 4);
    p += e.sum2.size() * 4;
    if (!m.entries.emplace(std::move(name), std::move(e)).second) fail("{}: entry {} repeats a name", path.string(), i);
  }
  if (raw.size() - p >= 8) {  // newer files: the chunk count and the dataset name
    m.chunk_count = i32("the chunk count");
    const std::int32_t len = i32("the dataset name length");
    if (len >= 0 && static_cast<std::size_t>(len) <= raw.size() - p) m.datasets.push_back(raw.substr(p, static_cast<std::size_t>(len)));
  }
  return m;
}

}  // namespace

std::map<std::string, std::vector<float>> Imatrix::importance() const {
  std::map<std::string, std::vector<float>> imp;
  for (const auto& [name, e] : entries) {
    std::vector<float> v = e.sum2;
    const float count = static_cast<float>(e.count);
    for (float& x : v) {
      if (!std::isfinite(x) || x < 0) fail("imatrix tensor '{}' has a negative or non-finite sum of squares", name);
      x /= count;
    }
    imp[name] = std::move(v);
  }
  if (imp.empty()) fail("the imatrix holds no tensors");
  return imp;
}

void Imatrix::to_token_sums(std::int64_t size) {
  if (!legacy) return;
  for (auto& [name, e] : entries) {
    for (float& x : e.sum2) x *= static_cast<float>(size);
    e.count *= static_cast<double>(size);
  }
  chunk_size = size;
  legacy = false;
}

void Imatrix::write_gguf(const fs::path& path, const OutputPolicy& policy) const {
  Writer w;
  w.set("general.type", Value::str("imatrix"));
  w.set("general.quantized_by", Value::str("quant 0.1.0"));  // marks the file as quant's own (--force replaces only these)
  std::vector<Value> names;
  for (const auto& d : datasets) names.push_back(Value::str(d));
  w.set("imatrix.datasets", Value::array(ValueType::STRING, std::move(names)));
  w.set("imatrix.chunk_count", Value::u32(static_cast<std::uint32_t>(chunk_count)));
  w.set("imatrix.chunk_size", Value::u32(static_cast<std::uint32_t>(chunk_size)));
  std::vector<const ImatrixEntry*> order;
  for (const auto& [name, e] : entries) {  // sorted by name, as llama-imatrix writes them
    w.add_tensor(name + ".in_sum2", {static_cast<std::int64_t>(e.sum2.size())}, GgmlType::F32);
    w.add_tensor(name + ".counts", {1}, GgmlType::F32);
    order.push_back(&e);
  }
  StagedFile staged(path, policy);
  w.write_to(staged.file(), [&](std::size_t i) {
    const ImatrixEntry& e = *order[i / 2];
    std::vector<std::uint8_t> b;
    if (i % 2 == 0) {
      b.resize(e.sum2.size() * 4);
      std::memcpy(b.data(), e.sum2.data(), b.size());
    } else {
      const float c = static_cast<float>(e.count);
      b.resize(4);
      std::memcpy(b.data(), &c, 4);
    }
    return b;
  });
  staged.commit();
}

void Imatrix::write_dat(const fs::path& path, const OutputPolicy& policy) const {
  std::string out;
  auto i32 = [&](std::int32_t v) { out.append(reinterpret_cast<const char*>(&v), 4); };
  // llama-imatrix's ncall: the number of chunks summed (at least one).
  const std::int32_t ncall = static_cast<std::int32_t>(std::max<std::int64_t>(chunk_count, 1));
  i32(static_cast<std::int32_t>(entries.size()));
  for (const auto& [name, e] : entries) {
    i32(static_cast<std::int32_t>(name.size()));
    out += name;
    i32(ncall);
    i32(static_cast<std::int32_t>(e.sum2.size()));
    for (float s : e.sum2) {
      const float v = (s / static_cast<float>(e.count)) * static_cast<float>(ncall);
      out.append(reinterpret_cast<const char*>(&v), 4);
    }
  }
  i32(static_cast<std::int32_t>(chunk_count));
  const std::string dataset = datasets.empty() ? std::string() : datasets.back();
  i32(static_cast<std::int32_t>(dataset.size()));
  out += dataset;
  StagedFile staged(path, policy);
  staged.file().write(out.data(), out.size());
  staged.commit();
}

void Imatrix::write(const fs::path& path, const OutputPolicy& policy) const {
  if (path.extension() == ".dat") write_dat(path, policy);
  else write_gguf(path, policy);
}

Imatrix read_imatrix_file(const fs::path& path) {
  return is_gguf_file(path) ? read_gguf(path) : read_dat(path);
}

}  // namespace quant::gguf
