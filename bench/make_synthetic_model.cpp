// Writes a random Llama-family checkpoint of a given shape (F16, fixed seed) for benchmarks:
//   quant_make_synthetic OUT_DIR [--preset llama-1.1b|llama-7b|mixtral-8x7b|tiny] [--layers N] [--seed S]
// llama-1.1b: hidden 2048, ffn 5632, 22 layers, 32 heads, 4 KV heads, vocab 32000, ctx 2048
// llama-7b: hidden 4096, ffn 11008, 32 layers, 32 heads, 32 KV heads, vocab 32000, ctx 4096
// mixtral-8x7b: hidden 4096, 8 experts of ffn 14336 (top 2), 32 layers, 32 heads, 8 KV heads,
// vocab 32000 (Mixtral-8x7B's shapes; 1.4 B parameters per layer, use --layers)
// (TinyLlama-1.1B's shapes). Weights ~ N(0, 0.02²), norms 1. A sentencepiece BPE tokenizer.model
// of the model's vocabulary size comes with it (<unk>, <s>, </s>, 256 byte-fallback pieces, then
// generated letter pieces), so the model can be evaluated on text and exported to GGUF; random
// calibration ids are written to calib.ids (for --calib-tokens).
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <string>

#include "quant/io/io.h"
#include "quant/io/safetensors.h"
#include "quant/model/tokenizer.h"

namespace {

constexpr const char* kUsage =
    "usage: quant_make_synthetic OUT_DIR [--preset llama-1.1b|llama-7b|mixtral-8x7b|tiny] [--layers N] [--seed S]\n"
    "Writes a random Llama checkpoint (F16 weights ~ N(0, 0.02^2), sentencepiece tokenizer.model, calib.ids)\n"
    "into OUT_DIR, which must not exist or be empty.\n"
    "  --preset llama-1.1b  hidden 2048, ffn 5632, 22 layers, 32 heads, 4 KV heads, vocab 32000 (default)\n"
    "  --preset llama-7b    hidden 4096, ffn 11008, 32 layers, 32 heads, 32 KV heads, vocab 32000 (13.5 GB)\n"
    "  --preset mixtral-8x7b  hidden 4096, 8 experts of ffn 14336 (top 2), 32 layers, 32 heads, 8 KV heads (2.8 GB per layer)\n"
    "  --preset tiny        hidden 256, ffn 688, 4 layers, 8 heads, 4 KV heads, vocab 1024\n";

// <unk>, <s>, </s>, the 256 byte pieces, then U+2581 and letter pieces up to `n`.
quant::SentencepieceVocab synthetic_vocab(std::int64_t n) {
  quant::SentencepieceVocab v;
  auto add = [&](const std::string& p, std::int64_t type, float score) {
    v.pieces.push_back(p);
    v.types.push_back(type);
    v.scores.push_back(score);
  };
  add("<unk>", 2, 0);
  add("<s>", 3, 0);
  add("</s>", 3, 0);
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    add(name, 6, 0);
  }
  const std::string space = "\xe2\x96\x81";
  std::vector<std::string> words = {space};
  for (char c = 33; c < 127; ++c) words.emplace_back(1, c);
  for (char c = 33; c < 127; ++c) words.push_back(space + c);
  for (int len = 2; words.size() < static_cast<std::size_t>(n); ++len) {
    std::vector<std::string> level = {""};
    for (int i = 0; i < len; ++i) {
      std::vector<std::string> next;
      for (const auto& p : level) {
        for (char c = 'a'; c <= 'z'; ++c) next.push_back(p + c);
      }
      level = std::move(next);
    }
    for (const auto& w : level) words.push_back(w), words.push_back(space + w);
  }
  for (std::size_t i = 0; v.pieces.size() < static_cast<std::size_t>(n); ++i) add(words[i], 1, -static_cast<float>(i));
  v.bos = 1;
  v.eos = 2;
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace quant;
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0) {
    std::fputs(kUsage, argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (argv[1][0] == '-') {
    std::fprintf(stderr, "error: the first argument is the output directory, got option '%s'\n%s", argv[1], kUsage);
    return 2;
  }
  const fs::path out = argv[1];
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out))) {
    std::fprintf(stderr, "error: %s exists and is not an empty directory; not writing into it\n", out.c_str());
    return 2;
  }
  std::string preset = "llama-1.1b";
  int layers = -1;
  unsigned seed = 0;
  for (int i = 2; i < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "error: %s needs a value\n%s", k.c_str(), kUsage);
      return 2;
    }
    try {
      if (k == "--preset") preset = argv[i + 1];
      else if (k == "--layers") layers = std::stoi(argv[i + 1]);
      else if (k == "--seed") seed = static_cast<unsigned>(std::stoul(argv[i + 1]));
      else {
        std::fprintf(stderr, "error: unknown option %s\n%s", k.c_str(), kUsage);
        return 2;
      }
    } catch (const std::exception&) {
      std::fprintf(stderr, "error: %s needs a number, got '%s'\n", k.c_str(), argv[i + 1]);
      return 2;
    }
  }
  std::int64_t H = 2048, F = 5632, L = 22, heads = 32, kv = 4, V = 32000, ctx = 2048;
  if (preset == "tiny") { H = 256; F = 688; L = 4; heads = 8; kv = 4; V = 1024; ctx = 512; }
  else if (preset == "llama-7b") { H = 4096; F = 11008; L = 32; heads = 32; kv = 32; V = 32000; ctx = 4096; }
  std::int64_t experts = 0;
  if (preset == "mixtral-8x7b") { H = 4096; F = 14336; L = 32; heads = 32; kv = 8; V = 32000; ctx = 4096; experts = 8; }
  else if (preset != "llama-1.1b" && preset != "tiny" && preset != "llama-7b") { std::fprintf(stderr, "unknown preset %s\n", preset.c_str()); return 2; }
  if (layers > 0) L = layers;
  const std::int64_t hd = H / heads;
  fs::create_directories(out);
  nlohmann::json config = {{"architectures", {experts ? "MixtralForCausalLM" : "LlamaForCausalLM"}}, {"model_type", experts ? "mixtral" : "llama"}, {"hidden_size", H},
                           {"intermediate_size", F}, {"num_hidden_layers", L}, {"num_attention_heads", heads},
                           {"num_key_value_heads", kv}, {"vocab_size", V}, {"max_position_embeddings", ctx},
                           {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0}, {"tie_word_embeddings", false},
                           {"hidden_act", "silu"}, {"bos_token_id", 1}, {"eos_token_id", 2}, {"torch_dtype", "float16"}};
  if (experts) {
    config["num_local_experts"] = experts;
    config["num_experts_per_tok"] = 2;
  }
  write_file_atomic(out / "config.json", config.dump(2));
  write_file_atomic(out / "tokenizer.model", sentencepiece_bpe_proto(synthetic_vocab(V), (out / "tokenizer.model").string()));
  write_file_atomic(out / "tokenizer_config.json", nlohmann::json({{"add_bos_token", true}, {"add_eos_token", false}}).dump(2));
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  WriterOptions wo;
  wo.max_shard_bytes = 1'000'000'000;
  SafetensorsWriter w(out, wo, {{"format", "pt"}});
  std::vector<float> buf;
  auto add = [&](const std::string& name, std::vector<std::int64_t> shape, bool ones = false) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    buf.resize(static_cast<std::size_t>(n));
    for (auto& x : buf) x = ones ? 1.0f : normal(rng);
    w.add_f32(name, DType::F16, shape, buf);
  };
  add("model.embed_tokens.weight", {V, H});
  for (std::int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {H}, true);
    add(p + "self_attn.q_proj.weight", {heads * hd, H});
    add(p + "self_attn.k_proj.weight", {kv * hd, H});
    add(p + "self_attn.v_proj.weight", {kv * hd, H});
    add(p + "self_attn.o_proj.weight", {H, heads * hd});
    add(p + "post_attention_layernorm.weight", {H}, true);
    if (experts) {  // MixtralSparseMoeBlock: router, experts' w1 (gate), w3 (up), w2 (down)
      add(p + "block_sparse_moe.gate.weight", {experts, H});
      for (std::int64_t e = 0; e < experts; ++e) {
        const std::string x = p + "block_sparse_moe.experts." + std::to_string(e) + ".";
        add(x + "w1.weight", {F, H});
        add(x + "w3.weight", {F, H});
        add(x + "w2.weight", {H, F});
      }
    } else {
      add(p + "mlp.gate_proj.weight", {F, H});
      add(p + "mlp.up_proj.weight", {F, H});
      add(p + "mlp.down_proj.weight", {H, F});
    }
    std::fprintf(stderr, "\rlayer %lld/%lld", static_cast<long long>(l + 1), static_cast<long long>(L));
  }
  add("model.norm.weight", {H}, true);
  add("lm_head.weight", {V, H});
  w.finish();
  // Random calibration ids (uniform over the vocabulary).
  std::string ids;
  std::uniform_int_distribution<std::int64_t> tok(3, V - 1);
  for (int i = 0; i < 200000; ++i) ids += std::to_string(tok(rng)) + (i % 32 == 31 ? "\n" : " ");
  write_file_atomic(out / "calib.ids", ids);
  std::fprintf(stderr, "\nwrote %s\n", out.c_str());
  return 0;
}
