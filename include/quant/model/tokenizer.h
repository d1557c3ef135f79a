// Tokenizers: sentencepiece tokenizer.model (libsentencepiece) and HF tokenizer.json BPE
// (byte-level GPT-2/Llama-3/Qwen style, and the sentencepiece-style metaspace + byte-fallback
// variant of Llama-2-family tokenizer.json files). Pre-tokenized input is read as token ids.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <utility>

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace quant {

namespace fs = std::filesystem;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Token ids of `text`, without BOS/EOS.
  virtual std::vector<std::int32_t> encode(std::string_view text) const = 0;
  virtual std::int64_t vocab_size() const = 0;
  // Kind, for logs: "sentencepiece", "bpe-bytelevel", "bpe-metaspace".
  virtual std::string kind() const = 0;

  // BOS id (-1 if none) and whether encode_for_model prepends it, from tokenizer_config.json's
  // add_bos_token or the tokenizer's post-processor.
  std::int32_t bos_id() const { return bos_id_; }
  bool add_bos() const { return add_bos_ && bos_id_ >= 0; }
  void set_bos(std::int32_t id, bool add) { bos_id_ = id; add_bos_ = add; }
  // encode() with BOS prepended when the tokenizer adds one.
  std::vector<std::int32_t> encode_for_model(std::string_view text) const;

  // The model directory's tokenizer: tokenizer.json if present, else tokenizer.model.
  // tokenizer_config.json (add_bos_token, bos_token) and config.json (bos_token_id) refine BOS.
  static std::unique_ptr<Tokenizer> load(const fs::path& model_dir);
  // A specific file: *.json (HF tokenizers) or a sentencepiece model.
  static std::unique_ptr<Tokenizer> load_file(const fs::path& path);

 protected:
  std::int32_t bos_id_ = -1;
  bool add_bos_ = false;
};

std::unique_ptr<Tokenizer> load_sentencepiece(const fs::path& path);
std::unique_ptr<Tokenizer> load_tokenizer_json(const fs::path& path);
// A sentencepiece ModelProto in its serialized (protobuf) form; `where` names it in errors.
std::unique_ptr<Tokenizer> load_sentencepiece_proto(const std::string& proto, const std::string& where);

// A BPE sentencepiece vocabulary (what llama.cpp's "llama" tokenizer holds): pieces with scores
// and types numbered as ModelProto.SentencePiece.Type (1 normal, 2 unknown, 3 control,
// 4 user-defined, 5 unused, 6 byte); byte fallback when all 256 byte pieces are there.
struct SentencepieceVocab {
  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<std::int64_t> types;
  std::int64_t bos = -1, eos = -1;
  bool add_space_prefix = true;
};
// The serialized ModelProto (a tokenizer.model file's bytes) of `vocab`, identity normalizer,
// whitespace escaped to U+2581. InputError (naming `where`) on a piece that is empty, a type
// out of range, or no unknown piece.
std::string sentencepiece_bpe_proto(const SentencepieceVocab& vocab, const std::string& where);
// A tokenizer.json document already parsed.
std::unique_ptr<Tokenizer> tokenizer_from_json(const nlohmann::json& j, const std::string& where);
// The tokenizer stored in a GGUF file (tokenizer.ggml.*): "llama" vocabularies as a
// sentencepiece BPE model, "gpt2" ones as a byte-level BPE tokenizer.json with the
// pre-tokenizer its tokenizer.ggml.pre names; BOS from bos_token_id / add_bos_token.
std::unique_ptr<Tokenizer> load_gguf_tokenizer(const fs::path& path);

// llama.cpp's tokenizer.ggml.pre names with the Split regex of their tokenizer.json.
const std::vector<std::pair<std::string, std::string>>& known_pre_regexes();

// Reads pre-tokenized input: token ids separated by whitespace or commas (a JSON array works).
std::vector<std::int32_t> read_token_ids(const fs::path& path);

}  // namespace quant
