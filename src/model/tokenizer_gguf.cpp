// The tokenizer of a GGUF file (tokenizer.ggml.*), rebuilt as the tokenizer it was converted
// from: llama.cpp's "llama" vocabulary (sentencepiece BPE: pieces, scores, token types) as a
// sentencepiece ModelProto, its "gpt2" vocabulary (tokens, merges, tokenizer.ggml.pre) as a
// byte-level BPE tokenizer.json. docs/formats.md ("GGUF as input") lists what is kept.
#include <cstring>

#include <nlohmann/json.hpp>

#include "quant/core/error.h"
#include "quant/io/gguf.h"
#include "quant/model/tokenizer.h"

namespace quant {

namespace {

using gguf::Value;
using gguf::ValueType;
using json = nlohmann::json;

// llama.cpp's token types, numbered as sentencepiece's ModelProto.SentencePiece.Type.
enum TokenType : std::int64_t { kNormal = 1, kUnknown = 2, kControl = 3, kUserDefined = 4, kUnused = 5, kByte = 6 };

// Protocol buffer wire format (https://protobuf.dev/programming-guides/encoding/), just what a
// ModelProto needs: varints, length-delimited fields and 32-bit floats.
class Proto {
 public:
  void varint(int field, std::uint64_t v) { key(field, 0); raw_varint(v); }
  void int32(int field, std::int32_t v) { varint(field, static_cast<std::uint64_t>(static_cast<std::int64_t>(v))); }
  void f32(int field, float v) {
    key(field, 5);
    char b[4];
    std::memcpy(b, &v, 4);
    out_.append(b, 4);
  }
  void bytes(int field, const std::string& s) { key(field, 2); raw_varint(s.size()); out_ += s; }
  const std::string& str() const { return out_; }

 private:
  void key(int field, int wire) { raw_varint(static_cast<std::uint64_t>(field) << 3 | static_cast<std::uint64_t>(wire)); }
  void raw_varint(std::uint64_t v) {
    for (; v >= 0x80; v >>= 7) out_ += static_cast<char>((v & 0x7f) | 0x80);
    out_ += static_cast<char>(v);
  }
  std::string out_;
};

const Value& array(const gguf::File& f, const char* key, ValueType elem) {
  const Value* v = f.find(key);
  if (!v || v->type != ValueType::ARRAY || (!v->arr.empty() && v->elem != elem)) {
    fail("{}: '{}' is missing or not an array of the expected type", f.path().string(), key);
  }
  return *v;
}

std::int64_t id_key(const gguf::File& f, const char* key) {
  const Value* v = f.find(key);
  if (!v) return -1;
  if (v->type == ValueType::UINT32 || v->type == ValueType::UINT64) return static_cast<std::int64_t>(v->u);
  if (v->type == ValueType::INT32 || v->type == ValueType::INT64) return v->i;
  fail("{}: '{}' must be an integer", f.path().string(), key);
}

bool bool_key(const gguf::File& f, const char* key, bool fallback) {
  const Value* v = f.find(key);
  return v && v->type == ValueType::BOOL ? v->u != 0 : fallback;
}

std::vector<std::int64_t> token_types(const gguf::File& f, std::size_t n) {
  std::vector<std::int64_t> types(n, kNormal);
  if (!f.find("tokenizer.ggml.token_type")) return types;
  const Value& t = array(f, "tokenizer.ggml.token_type", ValueType::INT32);
  if (t.arr.size() != n) fail("{}: tokenizer.ggml.token_type has {} entries for {} tokens", f.path().string(), t.arr.size(), n);
  for (std::size_t i = 0; i < n; ++i) types[i] = t.arr[i].i;
  return types;
}

// llama.cpp's SPM tokenizer (llm_tokenizer_spm) merges by score like sentencepiece's BPE model,
// prefixes a space unless tokenizer.ggml.add_space_prefix is false, and neither removes extra
// whitespace nor normalizes: a BPE ModelProto with an identity normalizer behaves the same.
std::unique_ptr<Tokenizer> spm_tokenizer(const gguf::File& f) {
  const Value& tokens = array(f, "tokenizer.ggml.tokens", ValueType::STRING);
  const std::size_t n = tokens.arr.size();
  const Value& scores = array(f, "tokenizer.ggml.scores", ValueType::FLOAT32);
  if (scores.arr.size() != n) fail("{}: tokenizer.ggml.scores has {} entries for {} tokens", f.path().string(), scores.arr.size(), n);
  SentencepieceVocab v;
  v.types = token_types(f, n);
  for (std::size_t i = 0; i < n; ++i) {
    v.pieces.push_back(tokens.arr[i].s);
    v.scores.push_back(static_cast<float>(scores.arr[i].f));
  }
  v.bos = id_key(f, "tokenizer.ggml.bos_token_id");
  v.eos = id_key(f, "tokenizer.ggml.eos_token_id");
  v.add_space_prefix = bool_key(f, "tokenizer.ggml.add_space_prefix", true);
  auto tok = load_sentencepiece_proto(sentencepiece_bpe_proto(v, f.path().string()), f.path().string());
  tok->set_bos(static_cast<std::int32_t>(v.bos), bool_key(f, "tokenizer.ggml.add_bos_token", true));
  return tok;
}

// llama.cpp's BPE vocabularies as the tokenizer.json they came from: the pre-tokenizer its
// tokenizer.ggml.pre names (llama-vocab.cpp), control and user-defined tokens as added tokens.
std::unique_ptr<Tokenizer> bpe_tokenizer(const gguf::File& f) {
  const Value& tokens = array(f, "tokenizer.ggml.tokens", ValueType::STRING);
  const std::size_t n = tokens.arr.size();
  const std::vector<std::int64_t> types = token_types(f, n);
  const Value* pre_v = f.find("tokenizer.ggml.pre");
  const std::string pre = pre_v && pre_v->type == ValueType::STRING ? pre_v->s : "gpt-2";
  json j;
  json vocab = json::object(), added = json::array(), merges = json::array();
  for (std::size_t i = 0; i < n; ++i) {
    if (types[i] == kUnused) continue;
    vocab[tokens.arr[i].s] = i;
    if (types[i] == kControl || types[i] == kUserDefined) {
      added.push_back({{"id", i}, {"content", tokens.arr[i].s}, {"special", types[i] == kControl}});
    }
  }
  for (const Value& m : array(f, "tokenizer.ggml.merges", ValueType::STRING).arr) merges.push_back(m.s);
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", pre == "gpt-2"}};
  if (pre == "gpt-2") {
    j["pre_tokenizer"] = byte_level;
  } else {
    std::string regex;
    for (const auto& [name, r] : known_pre_regexes()) {
      if (name == pre) regex = r;
    }
    if (regex.empty()) fail("{}: tokenizer.ggml.pre '{}' is not known to quant (known: gpt-2, llama-bpe, qwen2)", f.path().string(), pre);
    j["pre_tokenizer"] = {{"type", "Sequence"},
                          {"pretokenizers", json::array({{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
                                                         byte_level})}};
  }
  // llama-vocab.cpp: the llama-bpe pre-tokenizer ignores merges for words in the vocabulary, as
  // Llama 3's tokenizer.json says ("ignore_merges": true).
  j["model"] = {{"type", "BPE"}, {"vocab", std::move(vocab)}, {"merges", std::move(merges)}, {"ignore_merges", pre == "llama-bpe"}};
  j["added_tokens"] = std::move(added);
  auto tok = tokenizer_from_json(j, f.path().string());
  const std::int64_t bos = id_key(f, "tokenizer.ggml.bos_token_id");
  tok->set_bos(static_cast<std::int32_t>(bos), bool_key(f, "tokenizer.ggml.add_bos_token", false));
  return tok;
}

}  // namespace

std::string sentencepiece_bpe_proto(const SentencepieceVocab& v, const std::string& where) {
  const std::size_t n = v.pieces.size();
  if (v.scores.size() != n || v.types.size() != n) fail("{}: {} pieces but {} scores and {} types", where, n, v.scores.size(), v.types.size());
  Proto model;
  int bytes = 0;
  std::int64_t unk = -1;
  for (std::size_t i = 0; i < n; ++i) {
    if (v.types[i] < kNormal || v.types[i] > kByte) fail("{}: token {} has type {}, not a llama.cpp token type", where, i, v.types[i]);
    if (v.pieces[i].empty()) fail("{}: token {} is empty", where, i);
    Proto piece;
    piece.bytes(1, v.pieces[i]);
    piece.f32(2, v.scores[i]);
    piece.varint(3, static_cast<std::uint64_t>(v.types[i]));
    model.bytes(1, piece.str());
    bytes += v.types[i] == kByte;
    if (v.types[i] == kUnknown && unk < 0) unk = static_cast<std::int64_t>(i);
  }
  if (unk < 0) fail("{}: the vocabulary has no unknown token (type 2), which a sentencepiece model needs", where);
  auto text = [&](std::int64_t id) { return id >= 0 && static_cast<std::size_t>(id) < n ? v.pieces[static_cast<std::size_t>(id)] : std::string(); };
  Proto trainer;
  trainer.varint(3, 2);  // model_type BPE
  trainer.int32(4, static_cast<std::int32_t>(n));
  if (bytes == 256) trainer.varint(35, 1);  // byte_fallback
  trainer.int32(40, static_cast<std::int32_t>(unk));
  trainer.int32(41, static_cast<std::int32_t>(v.bos));
  trainer.int32(42, static_cast<std::int32_t>(v.eos));
  trainer.int32(43, -1);
  trainer.bytes(45, text(unk));
  if (v.bos >= 0) trainer.bytes(46, text(v.bos));
  if (v.eos >= 0) trainer.bytes(47, text(v.eos));
  Proto normalizer;
  normalizer.bytes(1, "identity");
  normalizer.varint(3, v.add_space_prefix);
  normalizer.varint(4, 0);  // remove_extra_whitespaces
  normalizer.varint(5, 1);  // escape_whitespaces
  model.bytes(2, trainer.str());
  model.bytes(3, normalizer.str());
  return model.str();
}

std::unique_ptr<Tokenizer> load_gguf_tokenizer(const fs::path& path) {
  const gguf::File f = gguf::File::open(path);
  const Value* model = f.find("tokenizer.ggml.model");
  if (!model || model->type != ValueType::STRING) fail("{}: no tokenizer.ggml.model (pass pre-tokenized input with --tokens)", path.string());
  if (model->s == "llama") return spm_tokenizer(f);
  if (model->s == "gpt2") return bpe_tokenizer(f);
  fail("{}: tokenizer.ggml.model '{}' is not supported (supported: llama, gpt2)", path.string(), model->s);
}

}  // namespace quant
