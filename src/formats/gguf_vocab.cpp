#include "gguf_vocab.h"

#include <sentencepiece_processor.h>

#include <nlohmann/json.hpp>

#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/model/tokenizer.h"

namespace quant::gguf {

namespace {

using json = nlohmann::json;

// llama.cpp token types.
enum TokenType : std::int32_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

void set_special_ids(const Model& model, Writer& w, std::int64_t fallback_bos, std::int64_t fallback_eos) {
  const auto& c = model.config();
  const std::int64_t bos = c.bos_token_id >= 0 ? c.bos_token_id : fallback_bos;
  const std::int64_t eos = c.eos_token_id >= 0 ? c.eos_token_id : fallback_eos;
  if (bos >= 0) w.set("tokenizer.ggml.bos_token_id", Value::u32(static_cast<std::uint32_t>(bos)));
  if (eos >= 0) w.set("tokenizer.ggml.eos_token_id", Value::u32(static_cast<std::uint32_t>(eos)));
  const std::unique_ptr<Tokenizer> tok = Tokenizer::load(model.dir());
  w.set("tokenizer.ggml.add_bos_token", Value::boolean(tok->add_bos()));
  w.set("tokenizer.ggml.add_eos_token", Value::boolean(false));
}

void add_sentencepiece(const Model& model, Writer& w, const fs::path& spm) {
  sentencepiece::SentencePieceProcessor sp;
  const auto status = sp.Load(spm.string());
  if (!status.ok()) fail("{}: not a sentencepiece model: {}", spm.string(), status.ToString());
  const int n = sp.GetPieceSize();
  if (n != model.config().vocab_size) {
    fail("{}: the tokenizer has {} pieces but config.json says vocab_size {}", spm.string(), n, model.config().vocab_size);
  }
  std::vector<Value> tokens, scores, types;
  for (int i = 0; i < n; ++i) {
    tokens.push_back(Value::str(sp.IdToPiece(i)));
    scores.push_back(Value::f32(sp.GetScore(i)));
    int type = kNormal;
    if (sp.IsUnknown(i)) type = kUnknown;
    else if (sp.IsControl(i)) type = kControl;
    else if (sp.IsUnused(i)) type = kUnused;
    else if (sp.IsByte(i)) type = kByte;
    types.push_back(Value::i32(type));
  }
  w.set("tokenizer.ggml.model", Value::str("llama"));
  w.set("tokenizer.ggml.tokens", Value::array(ValueType::STRING, std::move(tokens)));
  w.set("tokenizer.ggml.scores", Value::array(ValueType::FLOAT32, std::move(scores)));
  w.set("tokenizer.ggml.token_type", Value::array(ValueType::INT32, std::move(types)));
  if (sp.unk_id() >= 0) w.set("tokenizer.ggml.unknown_token_id", Value::u32(static_cast<std::uint32_t>(sp.unk_id())));
  if (sp.pad_id() >= 0) w.set("tokenizer.ggml.padding_token_id", Value::u32(static_cast<std::uint32_t>(sp.pad_id())));
  set_special_ids(model, w, sp.bos_id(), sp.eos_id());
}

// llama.cpp's tokenizer.ggml.pre for a byte-level tokenizer.json, or an error naming what
// llama.cpp would split differently.
std::string pre_name(const json& pre, const fs::path& file) {
  auto byte_level = [](const json& p) { return p.is_object() && p.value("type", "") == "ByteLevel"; };
  if (byte_level(pre) && pre.value("use_regex", true)) return "gpt-2";
  if (pre.is_object() && pre.value("type", "") == "Sequence" && pre.contains("pretokenizers")) {
    const json& seq = pre["pretokenizers"];
    if (seq.size() == 2 && seq[0].value("type", "") == "Split" && byte_level(seq[1]) && !seq[1].value("use_regex", true)) {
      const std::string regex = seq[0].value("pattern", json::object()).value("Regex", "");
      for (const auto& [name, r] : known_pre_regexes()) {
        if (regex == r) return name;
      }
      fail("{}: GGUF export does not know the pre-tokenizer regex '{}' (known: GPT-2, Llama 3, Qwen2)", file.string(), regex);
    }
  }
  fail("{}: GGUF export supports byte-level BPE tokenizer.json files (GPT-2, Llama 3, Qwen2 pre-tokenizers); this one's pre_tokenizer is {}",
       file.string(), pre.dump());
}

void add_bpe(const Model& model, Writer& w, const fs::path& file) {
  const json j = read_json_file(file, JsonLimits{.reject_duplicate_keys = false});
  const json& m = j.value("model", json::object());
  if (m.value("type", "BPE") != "BPE" || !m.contains("vocab") || !m["vocab"].is_object()) {
    fail("{}: GGUF export needs a BPE model with a vocab", file.string());
  }
  const std::string pre = pre_name(j.value("pre_tokenizer", json()), file);
  const std::int64_t n = model.config().vocab_size;
  std::vector<std::string> text(static_cast<std::size_t>(n));
  std::vector<std::int32_t> type(static_cast<std::size_t>(n), kUnused);
  auto put = [&](std::int64_t id, const std::string& s, std::int32_t t, const char* what) {
    if (id < 0 || id >= n) fail("{}: {} '{}' has id {}, outside config.json's vocab_size {}", file.string(), what, s, id, n);
    text[static_cast<std::size_t>(id)] = s;
    type[static_cast<std::size_t>(id)] = t;
  };
  for (const auto& [s, id] : m["vocab"].items()) put(id.get<std::int64_t>(), s, kNormal, "token");
  for (const auto& t : j.value("added_tokens", json::array())) {
    put(t.value("id", -1), t.value("content", ""), t.value("special", false) ? kControl : kUserDefined, "added token");
  }
  std::vector<Value> tokens, types, merges;
  for (std::int64_t i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    tokens.push_back(Value::str(type[k] == kUnused ? "[PAD" + std::to_string(i) + "]" : text[k]));
    types.push_back(Value::i32(type[k]));
  }
  for (const auto& e : m.value("merges", json::array())) {
    if (e.is_string()) merges.push_back(Value::str(e.get<std::string>()));
    else if (e.is_array() && e.size() == 2) merges.push_back(Value::str(e[0].get<std::string>() + " " + e[1].get<std::string>()));
    else fail("{}: merge {} is neither \"a b\" nor [a, b]", file.string(), e.dump());
  }
  w.set("tokenizer.ggml.model", Value::str("gpt2"));
  w.set("tokenizer.ggml.pre", Value::str(pre));
  w.set("tokenizer.ggml.tokens", Value::array(ValueType::STRING, std::move(tokens)));
  w.set("tokenizer.ggml.token_type", Value::array(ValueType::INT32, std::move(types)));
  w.set("tokenizer.ggml.merges", Value::array(ValueType::STRING, std::move(merges)));
  set_special_ids(model, w, -1, -1);
}

}  // namespace

void add_tokenizer(const Model& model, Writer& w) {
  // As llama.cpp's converter: a sentencepiece model when there is one (Llama-2 family
  // tokenizer.json files are its byte-fallback twin), else the byte-level BPE tokenizer.json.
  const fs::path spm = model.dir() / "tokenizer.model", hf = model.dir() / "tokenizer.json";
  if (fs::exists(spm)) return add_sentencepiece(model, w, spm);
  if (fs::exists(hf)) return add_bpe(model, w, hf);
  fail("{}: GGUF export needs tokenizer.model or tokenizer.json", model.dir().string());
}

}  // namespace quant::gguf
