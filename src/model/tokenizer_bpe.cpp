// HF tokenizer.json BPE (tokenizers' "BPE" model) with the normalizers and pre-tokenizers used
// by Llama-family checkpoints. Pipeline, as in HF tokenizers: split out added tokens; normalize;
// pre-tokenize into words (regex splits, byte-level mapping or metaspace); BPE-merge each word by
// merge rank; map symbols to ids (byte fallback <0xXX> or unk for unknown symbols).
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <unordered_map>

#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/model/tokenizer.h"

namespace quant {
namespace {

using nlohmann::json;

// GPT-2's pre-tokenization regex (ByteLevel with use_regex).
constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string utf8(std::uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Length of the UTF-8 sequence starting with byte c (1 for invalid lead bytes).
std::size_t utf8_len(unsigned char c) {
  if (c >= 0xF0 && c < 0xF8) return 4;
  if (c >= 0xE0) return c < 0xF0 ? 3 : 1;
  if (c >= 0xC0) return 2;
  return 1;
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 onwards.
std::array<std::string, 256> byte_to_unicode_table() {
  std::array<std::string, 256> t;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    t[b] = utf8(printable ? static_cast<std::uint32_t>(b) : static_cast<std::uint32_t>(256 + n++));
  }
  return t;
}

class Regex {
 public:
  Regex(const std::string& pattern, const std::string& where) {
    int err = 0;
    PCRE2_SIZE off = 0;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &off, nullptr);
    if (!code_) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      fail("{}: regex '{}' does not compile at offset {}: {}", where, pattern, off, reinterpret_cast<char*>(msg));
    }
    pcre2_jit_compile(code_, PCRE2_JIT_COMPLETE);  // optional speed-up; falls back silently
    match_ = pcre2_match_data_create_from_pattern(code_, nullptr);
  }
  ~Regex() {
    pcre2_match_data_free(match_);
    pcre2_code_free(code_);
  }
  Regex(const Regex&) = delete;
  // Calls f(begin, end) for every non-empty match in s.
  template <typename F>
  void for_each_match(std::string_view s, F&& f) const {
    std::size_t pos = 0;
    while (pos <= s.size()) {
      const int rc = pcre2_match(code_, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), pos, 0, match_, nullptr);
      if (rc < 0) break;
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(match_);
      if (ov[1] == ov[0]) {  // empty match: step one character
        pos = ov[1] + (ov[1] < s.size() ? utf8_len(static_cast<unsigned char>(s[ov[1]])) : 1);
        continue;
      }
      f(ov[0], ov[1]);
      pos = ov[1];
    }
  }

 private:
  pcre2_code* code_ = nullptr;
  pcre2_match_data* match_ = nullptr;
};

struct PreTokStep {
  enum Kind { split, byte_level, metaspace, digits } kind;
  std::shared_ptr<Regex> regex;  // split / byte_level with use_regex
  std::string behavior = "Isolated";
  bool invert = false;
  bool add_prefix_space = false;
  std::string replacement = "\xE2\x96\x81";  // ▁
  std::string prepend_scheme = "always";
  bool split_words = true;
};

struct NormStep {
  enum Kind { prepend, replace } kind;
  std::string a, b;
};

class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(const fs::path& path);
  BpeTokenizer(const json& j, std::string where);
  std::vector<std::int32_t> encode(std::string_view text) const override;
  std::int64_t vocab_size() const override { return static_cast<std::int64_t>(n_ids_); }
  std::string kind() const override { return byte_level_ ? "bpe-bytelevel" : "bpe-metaspace"; }

 private:
  void parse(const json& j);
  void parse_normalizer(const json& j);
  void parse_pre_tokenizer(const json& j);
  void parse_post_processor(const json& j);
  std::string normalize(std::string s) const;
  std::vector<std::string> pre_tokenize(std::string s, bool first_section) const;
  void bpe_word(const std::string& word, std::vector<std::int32_t>& out) const;
  int rank(const std::string& a, const std::string& b) const;

  std::string where_;
  std::unordered_map<std::string, std::int32_t> vocab_;
  std::unordered_map<std::string, int> merges_;  // a + '\0' + b -> rank
  std::vector<std::pair<std::string, std::int32_t>> added_;
  std::vector<NormStep> norm_;
  std::vector<PreTokStep> pre_;
  bool byte_level_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  bool fuse_unk_ = false;
  std::int32_t unk_ = -1;
  std::size_t n_ids_ = 0;
  std::array<std::string, 256> byte_map_ = byte_to_unicode_table();
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<std::int32_t>> cache_;
};

BpeTokenizer::BpeTokenizer(const fs::path& path)
    // As Hugging Face tokenizers reads it: a duplicate vocab key keeps the last (serde map).
    : BpeTokenizer(read_json_file(path, JsonLimits{.reject_duplicate_keys = false}), path.string()) {}

BpeTokenizer::BpeTokenizer(const json& j, std::string where) : where_(std::move(where)) {
  try {
    parse(j);
  } catch (const json::exception& e) {
    // A field of the wrong JSON type anywhere below (e.g. "byte_fallback": "yes").
    fail("{}: malformed tokenizer.json: {}", where_, e.what());
  }
}

void BpeTokenizer::parse(const json& j) {
  if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) fail("{}: missing 'model'", where_);
  const json& m = j["model"];
  const std::string type = m.value("type", std::string("BPE"));
  if (type != "BPE") fail("{}: unsupported tokenizer model type '{}' (supported: BPE)", where_, type);
  if (!m.contains("vocab") || !m["vocab"].is_object()) fail("{}: model.vocab must be an object", where_);
  for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
    if (!it->is_number_integer() || it->get<std::int64_t>() < 0 || it->get<std::int64_t>() > INT32_MAX) {
      fail("{}: model.vocab['{}'] is not a valid id", where_, it.key());
    }
    vocab_[it.key()] = it->get<std::int32_t>();
    n_ids_ = std::max(n_ids_, static_cast<std::size_t>(it->get<std::int32_t>()) + 1);
  }
  if (m.contains("merges") && m["merges"].is_array()) {
    int r = 0;
    for (const auto& e : m["merges"]) {
      std::string a, b;
      if (e.is_string()) {
        const std::string s = e;
        const auto sp = s.find(' ', 1);
        if (sp == std::string::npos) fail("{}: merge {} '{}' is not 'a b'", where_, r, s);
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
        a = e[0];
        b = e[1];
      } else {
        fail("{}: merge {} is neither 'a b' nor [a, b]", where_, r);
      }
      merges_.emplace(a + '\0' + b, r++);
    }
  }
  for (const char* unsupported : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(unsupported) && !m[unsupported].is_null() && m[unsupported] != "") {
      fail("{}: BPE option '{}' is not supported", where_, unsupported);
    }
  }
  byte_fallback_ = m.value("byte_fallback", false);
  ignore_merges_ = m.value("ignore_merges", false);
  fuse_unk_ = m.value("fuse_unk", false);
  if (m.contains("unk_token") && m["unk_token"].is_string()) {
    auto it = vocab_.find(m["unk_token"].get<std::string>());
    if (it != vocab_.end()) unk_ = it->second;
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& t : j["added_tokens"]) {
      if (!t.is_object() || !t.contains("id") || !t.contains("content") || !t["content"].is_string() ||
          !t["id"].is_number_integer()) {
        fail("{}: added_tokens entry {} needs 'id' and 'content'", where_, t.dump());
      }
      const std::string content = t["content"];
      if (t["id"].get<std::int64_t>() < 0 || t["id"].get<std::int64_t>() > INT32_MAX) {
        fail("{}: added token '{}' has id {}, not a valid id", where_, content, t["id"].get<std::int64_t>());
      }
      if (content.empty()) continue;
      added_.emplace_back(content, t["id"].get<std::int32_t>());
      n_ids_ = std::max(n_ids_, static_cast<std::size_t>(t["id"].get<std::int32_t>()) + 1);
    }
    // Longest first, so that a token that prefixes another does not shadow it.
    std::stable_sort(added_.begin(), added_.end(),
                     [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  }
  if (j.contains("normalizer")) parse_normalizer(j["normalizer"]);
  if (j.contains("pre_tokenizer")) parse_pre_tokenizer(j["pre_tokenizer"]);
  if (j.contains("post_processor")) parse_post_processor(j["post_processor"]);
}

void BpeTokenizer::parse_normalizer(const json& n) {
  if (n.is_null()) return;
  const std::string type = n.value("type", std::string());
  if (type == "Sequence") {
    for (const auto& s : n.value("normalizers", json::array())) parse_normalizer(s);
  } else if (type == "Prepend") {
    norm_.push_back({NormStep::prepend, n.value("prepend", std::string()), {}});
  } else if (type == "Replace") {
    const json& p = n.value("pattern", json::object());
    if (!p.contains("String")) fail("{}: Replace normalizer supports only String patterns", where_);
    norm_.push_back({NormStep::replace, p["String"].get<std::string>(), n.value("content", std::string())});
  } else if (type == "NFC" || type == "NFKC") {
    // Unicode composition is the identity on text that is already composed (all ASCII text,
    // and the usual NFC-encoded UTF-8); we do not recompose decomposed input.
  } else {
    fail("{}: unsupported normalizer type '{}' (supported: Sequence, Prepend, Replace, NFC, NFKC)", where_, type);
  }
}

void BpeTokenizer::parse_pre_tokenizer(const json& p) {
  if (p.is_null()) return;
  const std::string type = p.value("type", std::string());
  PreTokStep s{};
  if (type == "Sequence") {
    for (const auto& x : p.value("pretokenizers", json::array())) parse_pre_tokenizer(x);
    return;
  } else if (type == "Split") {
    s.kind = PreTokStep::split;
    const json& pat = p.value("pattern", json::object());
    std::string rx;
    if (pat.contains("Regex")) {
      rx = pat["Regex"];
    } else if (pat.contains("String")) {
      // A literal: quote it for PCRE2.
      rx = "\\Q" + pat["String"].get<std::string>() + "\\E";
    } else {
      fail("{}: Split pre-tokenizer needs a Regex or String pattern", where_);
    }
    s.regex = std::make_shared<Regex>(rx, where_);
    s.behavior = p.value("behavior", std::string("Isolated"));
    s.invert = p.value("invert", false);
    if (s.behavior != "Isolated" && s.behavior != "Removed" && s.behavior != "MergedWithPrevious" &&
        s.behavior != "MergedWithNext") {
      fail("{}: Split behavior '{}' is not supported", where_, s.behavior);
    }
  } else if (type == "ByteLevel") {
    s.kind = PreTokStep::byte_level;
    s.add_prefix_space = p.value("add_prefix_space", false);
    if (p.value("use_regex", true)) s.regex = std::make_shared<Regex>(kGpt2Pattern, where_);
    byte_level_ = true;
  } else if (type == "Metaspace") {
    s.kind = PreTokStep::metaspace;
    s.replacement = p.value("replacement", s.replacement);
    if (p.contains("prepend_scheme")) {
      s.prepend_scheme = p["prepend_scheme"];
    } else {
      s.prepend_scheme = p.value("add_prefix_space", true) ? "always" : "never";
    }
    s.split_words = p.value("split", true);
  } else if (type == "Digits") {
    s.kind = PreTokStep::digits;
    s.regex = std::make_shared<Regex>(p.value("individual_digits", false) ? "\\p{N}" : "\\p{N}+", where_);
  } else {
    fail("{}: unsupported pre_tokenizer type '{}' (supported: Sequence, Split, ByteLevel, Metaspace, Digits)", where_, type);
  }
  pre_.push_back(std::move(s));
}

void BpeTokenizer::parse_post_processor(const json& p) {
  if (p.is_null()) return;
  const std::string type = p.value("type", std::string());
  if (type == "Sequence") {
    for (const auto& x : p.value("processors", json::array())) parse_post_processor(x);
  } else if (type == "TemplateProcessing") {
    const json& single = p.value("single", json::array());
    if (!single.empty() && single[0].contains("SpecialToken")) {
      const std::string id = single[0]["SpecialToken"].value("id", std::string());
      const json& specials = p.value("special_tokens", json::object());
      if (specials.contains(id) && specials[id].contains("ids") && !specials[id]["ids"].empty()) {
        set_bos(specials[id]["ids"][0].get<std::int32_t>(), true);
      }
    }
  }
  // ByteLevel and other processors add nothing at the start.
}

std::string BpeTokenizer::normalize(std::string s) const {
  for (const auto& n : norm_) {
    if (n.kind == NormStep::prepend) {
      if (!s.empty()) s = n.a + s;
    } else if (!n.a.empty()) {
      std::string out;
      std::size_t pos = 0;
      for (std::size_t f; (f = s.find(n.a, pos)) != std::string::npos; pos = f + n.a.size()) {
        out.append(s, pos, f - pos);
        out += n.b;
      }
      out.append(s, pos, std::string::npos);
      s = std::move(out);
    }
  }
  return s;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(std::string s, bool first_section) const {
  std::vector<std::string> pieces = {std::move(s)};
  for (const auto& step : pre_) {
    std::vector<std::string> next;
    for (auto& piece : pieces) {
      if (step.kind == PreTokStep::metaspace) {
        std::string r;
        for (char c : piece) {
          if (c == ' ') r += step.replacement;
          else r += c;
        }
        const bool prepend = step.prepend_scheme == "always" || (step.prepend_scheme == "first" && first_section);
        if (prepend && r.compare(0, step.replacement.size(), step.replacement) != 0) r = step.replacement + r;
        first_section = false;
        if (!step.split_words) {
          next.push_back(std::move(r));
          continue;
        }
        std::size_t start = 0;  // split before each replacement (MergedWithNext)
        for (std::size_t f = r.find(step.replacement, 1); f != std::string::npos; f = r.find(step.replacement, f + 1)) {
          next.push_back(r.substr(start, f - start));
          start = f;
        }
        next.push_back(r.substr(start));
        continue;
      }
      if (step.kind == PreTokStep::byte_level && step.add_prefix_space && !piece.empty() && piece[0] != ' ') {
        piece = " " + piece;
      }
      if (!step.regex) {
        next.push_back(std::move(piece));
        continue;
      }
      // Regex split with a behaviour for the matched parts.
      std::vector<std::pair<std::string, bool>> parts;  // (text, matched)
      std::size_t last = 0;
      step.regex->for_each_match(piece, [&](std::size_t b, std::size_t e) {
        if (b > last) parts.emplace_back(piece.substr(last, b - last), false);
        parts.emplace_back(piece.substr(b, e - b), true);
        last = e;
      });
      if (last < piece.size()) parts.emplace_back(piece.substr(last), false);
      if (step.invert) for (auto& p : parts) p.second = !p.second;
      const std::string behavior = step.kind == PreTokStep::split ? step.behavior : "Isolated";
      if (behavior == "Isolated") {
        for (auto& p : parts) next.push_back(std::move(p.first));
      } else if (behavior == "Removed") {
        for (auto& p : parts) if (!p.second) next.push_back(std::move(p.first));
      } else if (behavior == "MergedWithPrevious") {
        for (auto& p : parts) {
          if (p.second && !next.empty()) next.back() += p.first;
          else next.push_back(std::move(p.first));
        }
      } else {  // MergedWithNext
        std::string carry;
        for (auto& p : parts) {
          if (p.second) {
            carry += p.first;
          } else {
            next.push_back(carry + p.first);
            carry.clear();
          }
        }
        if (!carry.empty()) next.push_back(carry);
      }
    }
    pieces = std::move(next);
  }
  if (byte_level_) {
    for (auto& p : pieces) {
      std::string mapped;
      for (unsigned char c : p) mapped += byte_map_[c];
      p = std::move(mapped);
    }
  }
  std::erase_if(pieces, [](const std::string& p) { return p.empty(); });
  return pieces;
}

int BpeTokenizer::rank(const std::string& a, const std::string& b) const {
  std::string key;
  key.reserve(a.size() + b.size() + 1);
  key += a;
  key += '\0';
  key += b;
  auto it = merges_.find(key);
  return it == merges_.end() ? -1 : it->second;
}

void BpeTokenizer::bpe_word(const std::string& word, std::vector<std::int32_t>& out) const {
  if (ignore_merges_) {
    if (auto it = vocab_.find(word); it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= 64;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  // Symbols as a doubly linked list; candidate merges in a min-heap of (rank, left position).
  std::vector<std::string> sym;
  for (std::size_t i = 0; i < word.size();) {
    const std::size_t n = std::min(utf8_len(static_cast<unsigned char>(word[i])), word.size() - i);
    sym.push_back(word.substr(i, n));
    i += n;
  }
  const int n = static_cast<int>(sym.size());
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  using Cand = std::tuple<int, int, int>;  // rank, left, right
  std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
  auto push = [&](int l) {
    if (l < 0 || next[l] < 0) return;
    const int r = rank(sym[l], sym[next[l]]);
    if (r >= 0) heap.emplace(r, l, next[l]);
  };
  for (int i = 0; i + 1 < n; ++i) push(i);
  while (!heap.empty()) {
    auto [r, l, rt] = heap.top();
    heap.pop();
    if (!alive[l] || !alive[rt] || next[l] != rt || rank(sym[l], sym[rt]) != r) continue;
    sym[l] += sym[rt];
    alive[rt] = false;
    next[l] = next[rt];
    if (next[rt] >= 0) prev[next[rt]] = l;
    push(prev[l]);
    push(l);
  }
  std::vector<std::int32_t> ids;
  bool last_unk = false;
  for (int i = 0; i >= 0 && i < n; i = next[i]) {
    if (auto it = vocab_.find(sym[i]); it != vocab_.end()) {
      ids.push_back(it->second);
      last_unk = false;
      continue;
    }
    if (byte_fallback_) {
      bool ok = true;
      std::vector<std::int32_t> bytes;
      for (unsigned char c : sym[i]) {
        auto it = vocab_.find(fmt::format("<0x{:02X}>", c));
        if (it == vocab_.end()) { ok = false; break; }
        bytes.push_back(it->second);
      }
      if (ok) {
        ids.insert(ids.end(), bytes.begin(), bytes.end());
        last_unk = false;
        continue;
      }
    }
    if (unk_ < 0) fail("{}: symbol '{}' is not in the vocabulary and there is no unk_token", where_, sym[i]);
    if (!(fuse_unk_ && last_unk)) ids.push_back(unk_);
    last_unk = true;
  }
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    cache_.emplace(word, std::move(ids));
  }
}

std::vector<std::int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::vector<std::int32_t> out;
  bool first = true;
  auto encode_segment = [&](std::string_view seg) {
    if (seg.empty()) return;
    for (const auto& word : pre_tokenize(normalize(std::string(seg)), first)) bpe_word(word, out);
    first = false;
  };
  // Split out added tokens: at each step the earliest (then longest) occurrence.
  std::vector<std::size_t> next_at(added_.size());
  for (std::size_t k = 0; k < added_.size(); ++k) next_at[k] = text.find(added_[k].first);
  std::size_t pos = 0;
  while (true) {
    std::size_t best = std::string_view::npos, best_k = 0;
    for (std::size_t k = 0; k < added_.size(); ++k) {
      if (next_at[k] != std::string_view::npos && next_at[k] < pos) next_at[k] = text.find(added_[k].first, pos);
      if (next_at[k] < best) {
        best = next_at[k];
        best_k = k;
      }
    }
    if (best == std::string_view::npos) break;
    encode_segment(text.substr(pos, best - pos));
    out.push_back(added_[best_k].second);
    pos = best + added_[best_k].first.size();
    first = false;
  }
  encode_segment(text.substr(pos));
  return out;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer_json(const fs::path& path) {
  return std::make_unique<BpeTokenizer>(path);
}

std::unique_ptr<Tokenizer> tokenizer_from_json(const json& j, const std::string& where) {
  return std::make_unique<BpeTokenizer>(j, where);
}

}  // namespace quant
