#include "quant/model/tokenizer.h"

#include <sentencepiece_processor.h>

#include <cctype>
#include <nlohmann/json.hpp>

#include "quant/core/error.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"
#include "quant/core/log.h"

namespace quant {

std::vector<std::int32_t> Tokenizer::encode_for_model(std::string_view text) const {
  std::vector<std::int32_t> ids;
  if (add_bos()) ids.push_back(bos_id_);
  auto body = encode(text);
  ids.insert(ids.end(), body.begin(), body.end());
  return ids;
}

namespace {

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const fs::path& path) {
    const auto status = sp_.Load(path.string());
    if (!status.ok()) fail("{}: not a sentencepiece model: {}", path.string(), status.ToString());
    // LlamaTokenizer's defaults: BOS added.
    set_bos(sp_.bos_id(), sp_.bos_id() >= 0);
  }
  SentencePieceTokenizer(const std::string& proto, const std::string& where) {
    const auto status = sp_.LoadFromSerializedProto(proto);
    if (!status.ok()) fail("{}: the vocabulary does not make a sentencepiece model: {}", where, status.ToString());
    set_bos(sp_.bos_id(), sp_.bos_id() >= 0);
  }
  std::vector<std::int32_t> encode(std::string_view text) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(absl::string_view(text.data(), text.size()), &ids);
    if (!status.ok()) fail("sentencepiece: encoding failed: {}", status.ToString());
    return {ids.begin(), ids.end()};
  }
  std::int64_t vocab_size() const override { return sp_.GetPieceSize(); }
  std::string kind() const override { return "sentencepiece"; }
  std::int32_t piece_id(const std::string& piece) const { return sp_.PieceToId(piece); }

 private:
  sentencepiece::SentencePieceProcessor sp_;
};

std::string token_content(const nlohmann::json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"];
  return {};
}

}  // namespace

std::unique_ptr<Tokenizer> load_sentencepiece(const fs::path& path) {
  return std::make_unique<SentencePieceTokenizer>(path);
}

std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& proto, const std::string& where) {
  return std::make_unique<SentencePieceTokenizer>(proto, where);
}

const std::vector<std::pair<std::string, std::string>>& known_pre_regexes() {
  // The Split regexes of the byte-level tokenizer.json families llama.cpp names (its
  // tokenizer.ggml.pre), as their tokenizer.json files spell them.
  static const std::vector<std::pair<std::string, std::string>> k = {
      {"llama-bpe",
       "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
      {"qwen2",
       "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
  };
  return k;
}

std::unique_ptr<Tokenizer> Tokenizer::load_file(const fs::path& path) {
  if (!fs::exists(path)) fail("{}: tokenizer file not found", path.string());
  if (path.extension() == ".json") return load_tokenizer_json(path);
  return load_sentencepiece(path);
}

std::unique_ptr<Tokenizer> Tokenizer::load(const fs::path& dir) {
  if (gguf::is_gguf_file(dir)) return load_gguf_tokenizer(dir);
  std::unique_ptr<Tokenizer> tok;
  if (fs::exists(dir / "tokenizer.json")) {
    tok = load_tokenizer_json(dir / "tokenizer.json");
  } else if (fs::exists(dir / "tokenizer.model")) {
    tok = load_sentencepiece(dir / "tokenizer.model");
  } else {
    fail("{}: no tokenizer.json or tokenizer.model (pass pre-tokenized input with --tokens)", dir.string());
  }
  // tokenizer_config.json refines BOS handling.
  const fs::path cfg_path = dir / "tokenizer_config.json";
  if (fs::exists(cfg_path)) {
    const nlohmann::json cfg = read_json_file(cfg_path);
    std::int32_t bos = tok->bos_id();
    if (cfg.contains("bos_token")) {
      const std::string content = token_content(cfg["bos_token"]);
      if (auto* sp = dynamic_cast<SentencePieceTokenizer*>(tok.get()); sp && !content.empty()) {
        bos = sp->piece_id(content);
      }
    }
    bool add = tok->add_bos();
    if (cfg.contains("add_bos_token") && cfg["add_bos_token"].is_boolean()) add = cfg["add_bos_token"];
    tok->set_bos(bos, add);
  }
  if (tok->bos_id() < 0 && fs::exists(dir / "config.json")) {
    const auto cfg = read_json_file(dir / "config.json");
    if (cfg.is_object() && cfg.contains("bos_token_id") && cfg["bos_token_id"].is_number_integer()) {
      tok->set_bos(cfg["bos_token_id"], tok->add_bos());
    }
  }
  log::debug("tokenizer: {} ({} tokens), BOS {} {}", tok->kind(), tok->vocab_size(), tok->bos_id(),
             tok->add_bos() ? "added" : "not added");
  return tok;
}

std::vector<std::int32_t> read_token_ids(const fs::path& path) {
  const std::string text = read_text_file(path);
  std::vector<std::int32_t> ids;
  std::size_t i = 0;
  while (i < text.size()) {
    const char ch = text[i];
    if (std::isspace(static_cast<unsigned char>(ch)) || ch == ',' || ch == '[' || ch == ']') {
      ++i;
      continue;
    }
    std::size_t j = i;
    if (text[j] == '-') ++j;
    while (j < text.size() && std::isdigit(static_cast<unsigned char>(text[j]))) ++j;
    if (j == i || (j == i + 1 && text[i] == '-')) {
      fail("{}: byte {}: expected a token id, found '{}'", path.string(), i, text.substr(i, 16));
    }
    const long long v = std::stoll(text.substr(i, j - i));
    if (v < 0 || v > INT32_MAX) fail("{}: byte {}: token id {} out of range", path.string(), i, v);
    ids.push_back(static_cast<std::int32_t>(v));
    i = j;
  }
  if (ids.empty()) fail("{}: no token ids", path.string());
  return ids;
}

}  // namespace quant
