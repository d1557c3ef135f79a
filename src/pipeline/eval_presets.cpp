#include "quant/pipeline/eval_presets.h"

#include <bit>

#include <nlohmann/json.hpp>

#include "quant/core/error.h"
#include "quant/core/log.h"

namespace quant {

namespace {

const std::pair<const char*, EvalPreset> kPresets[] = {
    {"wikitext2", EvalPreset::wikitext2}, {"ptb", EvalPreset::ptb}, {"c4", EvalPreset::c4}, {"c4-new", EvalPreset::c4_new}};

// Code points Python's str.isspace() accepts (Unicode White_Space plus the ASCII separators
// \x1c–\x1f that CPython treats as whitespace).
bool python_space(std::uint32_t cp) {
  return (cp >= 0x09 && cp <= 0x0d) || (cp >= 0x1c && cp <= 0x20) || cp == 0x85 || cp == 0xa0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200a) || cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
}

// The code point starting at s[i] and its length in bytes (invalid UTF-8: the byte itself).
std::pair<std::uint32_t, std::size_t> decode(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  if (n == 1 || i + n > s.size()) return {c, 1};
  std::uint32_t cp = c & (0x7f >> n);
  for (std::size_t k = 1; k < n; ++k) cp = cp << 6 | (static_cast<unsigned char>(s[i + k]) & 0x3f);
  return {cp, n};
}

}  // namespace

EvalPreset parse_eval_preset(const std::string& name) {
  std::string names;
  for (const auto& [n, p] : kPresets) {
    if (name == n) return p;
    names += (names.empty() ? "" : ", ") + std::string(n);
  }
  fail<UsageError>("unknown --preset '{}' (known: {})", name, names);
}

std::string eval_preset_name(EvalPreset p) {
  for (const auto& [n, q] : kPresets) {
    if (p == q) return n;
  }
  return "none";
}

std::string_view python_strip(std::string_view s) {
  std::size_t b = 0;
  while (b < s.size()) {
    const auto [cp, n] = decode(s, b);
    if (!python_space(cp)) break;
    b += n;
  }
  std::size_t e = s.size();
  while (e > b) {  // step back to the start of the last code point
    std::size_t k = e - 1;
    while (k > b && (static_cast<unsigned char>(s[k]) & 0xc0) == 0x80) --k;
    if (!python_space(decode(s, k).first)) break;
    e = k;
  }
  return s.substr(b, e - b);
}

std::vector<std::string> python_lines(std::string_view text) {
  std::vector<std::string> lines;
  std::string cur;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      cur += '\n';
      lines.push_back(std::move(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) lines.push_back(std::move(cur));
  return lines;
}

std::string preset_text(EvalPreset p, std::string_view raw) {
  std::string out;
  bool first = true;
  for (const std::string& line : python_lines(raw)) {
    if (!first) out += p == EvalPreset::wikitext2 ? "\n\n" : " ";
    first = false;
    // wikitext.py _generate_examples: {"text": row} if row.strip() else {"text": ""};
    // ptb_text_only.py: {"sentence": line.strip()}.
    if (p == EvalPreset::wikitext2) out += python_strip(line).empty() ? std::string_view() : std::string_view(line);
    else out += python_strip(line);
  }
  return out;
}

std::vector<std::string> read_jsonl_texts(std::string_view raw, const std::string& where) {
  std::vector<std::string> texts;
  std::size_t line_no = 0;
  for (const std::string& line : python_lines(raw)) {
    ++line_no;
    if (python_strip(line).empty()) continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: line {}: not JSON: {}", where, line_no, e.what());
    }
    if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) fail("{}: line {}: no string field \"text\"", where, line_no);
    texts.push_back(j["text"].get<std::string>());
  }
  if (texts.empty()) fail("{}: no documents (expected JSON lines with a \"text\" field)", where);
  return texts;
}

PythonRandom::PythonRandom(std::uint64_t seed) {
  // random_seed(): the absolute value's 32-bit words, least significant first ([0] for 0),
  // then init_by_array.
  std::vector<std::uint32_t> key;
  for (std::uint64_t s = seed; s != 0; s >>= 32) key.push_back(static_cast<std::uint32_t>(s));
  if (key.empty()) key.push_back(0);
  mt_[0] = 19650218u;
  for (int i = 1; i < 624; ++i) mt_[i] = 1812433253u * (mt_[i - 1] ^ (mt_[i - 1] >> 30)) + static_cast<std::uint32_t>(i);
  int i = 1;
  std::size_t j = 0;
  for (std::size_t k = std::max<std::size_t>(624, key.size()); k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1664525u)) + key[j] + static_cast<std::uint32_t>(j);
    ++i;
    ++j;
    if (i >= 624) { mt_[0] = mt_[623]; i = 1; }
    if (j >= key.size()) j = 0;
  }
  for (int k = 623; k > 0; --k) {
    mt_[i] = (mt_[i] ^ ((mt_[i - 1] ^ (mt_[i - 1] >> 30)) * 1566083941u)) - static_cast<std::uint32_t>(i);
    ++i;
    if (i >= 624) { mt_[0] = mt_[623]; i = 1; }
  }
  mt_[0] = 0x80000000u;
}

std::uint32_t PythonRandom::next32() {
  if (index_ >= 624) {
    for (int k = 0; k < 624; ++k) {
      const std::uint32_t y = (mt_[k] & 0x80000000u) | (mt_[(k + 1) % 624] & 0x7fffffffu);
      mt_[k] = mt_[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
    }
    index_ = 0;
  }
  std::uint32_t y = mt_[index_++];
  y ^= y >> 11;
  y ^= (y << 7) & 0x9d2c5680u;
  y ^= (y << 15) & 0xefc60000u;
  y ^= y >> 18;
  return y;
}

std::uint64_t PythonRandom::getrandbits(int k) {
  // random_getrandbits: 32-bit words from the least significant up, the last one shifted down.
  if (k <= 32) return next32() >> (32 - k);
  const std::uint64_t low = next32();
  const std::uint64_t high = next32() >> (64 - k);
  return high << 32 | low;
}

std::int64_t PythonRandom::randint(std::int64_t a, std::int64_t b) {
  if (b < a) fail<Error>("empty range for randint({}, {})", a, b);
  const auto n = static_cast<std::uint64_t>(b - a) + 1;
  const int k = std::bit_width(n);  // _randbelow_with_getrandbits
  std::uint64_t r = getrandbits(k);
  while (r >= n) r = getrandbits(k);
  return a + static_cast<std::int64_t>(r);
}

std::vector<std::int32_t> c4_windows(const std::vector<std::string>& docs, const Tokenizer& tok, std::int64_t ctx, int n,
                                     std::uint64_t seed) {
  PythonRandom rng(seed);
  std::vector<std::int32_t> out;
  std::int64_t drawn = 0;
  for (int w = 0; w < n; ++w) {
    std::vector<std::int32_t> ids;
    for (;;) {
      const auto d = rng.randint(0, static_cast<std::int64_t>(docs.size()) - 1);
      ids = tok.encode_for_model(docs[static_cast<std::size_t>(d)]);
      if (++drawn > 1000000) fail("c4: a million documents drawn and too few have {} tokens", ctx);
      if (static_cast<std::int64_t>(ids.size()) >= ctx) break;
    }
    const auto i = rng.randint(0, static_cast<std::int64_t>(ids.size()) - ctx - 1);
    out.insert(out.end(), ids.begin() + i, ids.begin() + i + ctx);
  }
  log::info("c4: {} windows of {} tokens from {} documents drawn", n, ctx, drawn);
  return out;
}

std::vector<std::int32_t> c4_new_tokens(const std::vector<std::string>& docs, const Tokenizer& tok, std::int64_t ctx, int n) {
  std::string text;
  for (std::size_t i = 0; i < std::min<std::size_t>(docs.size(), 1100); ++i) text += (i ? " " : "") + docs[i];
  std::vector<std::int32_t> ids = tok.encode_for_model(text);
  const auto want = static_cast<std::size_t>(n) * static_cast<std::size_t>(ctx);
  if (ids.size() < want) fail("c4-new: the first {} documents give {} tokens, fewer than {} × {}", std::min<std::size_t>(docs.size(), 1100), ids.size(), n, ctx);
  ids.resize(want);
  return ids;
}

}  // namespace quant
