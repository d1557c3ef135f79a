// The cached-base file of `quant eval --save-logits` / `--base-logits` (format in eval.h).
#include <cmath>
#include <cstring>

#include "quant/core/error.h"
#include "quant/core/json.h"
#include "quant/io/safetensors.h"
#include "quant/pipeline/eval.h"

namespace quant {

namespace {
constexpr char kMagic[8] = {'Q', 'K', 'L', 'B', 'A', 'S', 'E', '1'};
}  // namespace

void BaseLogits::save(const fs::path& path, const OutputPolicy& policy) const {
  nlohmann::json h = header;
  h["k"] = k;
  h["positions"] = positions.size();
  const std::string hs = h.dump();
  std::vector<char> buf;
  auto put = [&](const void* p, std::size_t n) { buf.insert(buf.end(), static_cast<const char*>(p), static_cast<const char*>(p) + n); };
  put(kMagic, 8);
  const std::uint64_t len = hs.size();
  put(&len, 8);
  put(hs.data(), hs.size());
  StagedFile out(path, policy);
  for (const TopK& t : positions) {
    if (static_cast<int>(t.ids.size()) != k) fail<Error>("BaseLogits::save: a position holds {} entries, not k = {}", t.ids.size(), k);
    put(&t.target_logp, 4);
    put(t.ids.data(), t.ids.size() * 4);
    put(t.logp.data(), t.logp.size() * 4);
    if (buf.size() > (std::size_t{8} << 20)) {
      out.file().write(buf.data(), buf.size());
      buf.clear();
    }
  }
  out.file().write(buf.data(), buf.size());
  out.commit();
}

BaseLogits BaseLogits::load(const fs::path& path) {
  const MappedFile f(path);
  const auto* p = reinterpret_cast<const char*>(f.data());
  const std::size_t n = f.size();
  if (n < 16 || std::memcmp(p, kMagic, 8) != 0) fail("{}: not a quant base-logits file (written by quant eval --save-logits)", path.string());
  std::uint64_t len = 0;
  std::memcpy(&len, p + 8, 8);
  if (len > n - 16 || len > (std::uint64_t{1} << 20)) fail("{}: header length {} does not fit the file ({} bytes)", path.string(), len, n);
  BaseLogits b;
  b.header = parse_json(std::string_view(p + 16, len), path.string());
  if (!b.header.is_object() || !b.header.contains("k") || !b.header["k"].is_number_integer() || !b.header.contains("positions") ||
      !b.header["positions"].is_number_integer() || !b.header.contains("vocab_size") || !b.header["vocab_size"].is_number_integer()) {
    fail("{}: header lacks k, positions or vocab_size", path.string());
  }
  b.k = b.header["k"].get<int>();
  const auto count = b.header["positions"].get<std::int64_t>();
  const auto vocab = b.header["vocab_size"].get<std::int64_t>();
  if (b.k < 1 || b.k > vocab || count < 0) fail("{}: k = {} (vocabulary {}) or {} positions is invalid", path.string(), b.k, vocab, count);
  const std::size_t rec = 4 + 8 * static_cast<std::size_t>(b.k);
  const std::size_t body = n - 16 - len;
  if (body / rec != static_cast<std::size_t>(count) || body % rec != 0) {
    fail("{}: {} bytes of data for {} positions of k = {} (expected {}): truncated or damaged", path.string(), body, count, b.k,
         static_cast<std::size_t>(count) * rec);
  }
  const char* d = p + 16 + len;
  b.positions.resize(static_cast<std::size_t>(count));
  for (std::size_t i = 0; i < b.positions.size(); ++i, d += rec) {
    TopK& t = b.positions[i];
    std::memcpy(&t.target_logp, d, 4);
    t.ids.resize(static_cast<std::size_t>(b.k));
    t.logp.resize(static_cast<std::size_t>(b.k));
    std::memcpy(t.ids.data(), d + 4, 4 * t.ids.size());
    std::memcpy(t.logp.data(), d + 4 + 4 * t.ids.size(), 4 * t.logp.size());
    bool ok = std::isfinite(t.target_logp) && t.target_logp <= 0;
    for (std::size_t j = 0; j < t.ids.size(); ++j) ok = ok && t.ids[j] >= 0 && t.ids[j] < vocab && std::isfinite(t.logp[j]) && t.logp[j] <= 0;
    if (!ok) fail("{}: position {} holds an id outside the vocabulary or a log-probability that is not finite and ≤ 0", path.string(), i);
  }
  return b;
}

}  // namespace quant
