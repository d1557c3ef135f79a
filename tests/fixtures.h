// Tiny generated fixtures for tests: random Llama-family models with a fixed seed, written as
// real safetensors checkpoints, and helpers for temporary directories and shared data.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "quant/core/dtype.h"

namespace quant::testing {

namespace fs = std::filesystem;

// A fresh empty directory under the system temp dir, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const fs::path& path() const { return path_; }
  fs::path operator/(const std::string& s) const { return path_ / s; }

 private:
  fs::path path_;
};

struct TinyModelSpec {
  std::string model_type = "llama";
  int hidden = 32;
  int intermediate = 64;
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int vocab = 96;
  int ctx = 128;
  bool tied = true;
  bool attention_bias = false;  // qwen2 always has q/k/v bias
  int head_dim = 0;             // 0: hidden / heads (qwen3/gemma write it explicitly)
  // Family fields (qwen3: q/k norms; gemma2/gemma3_text: four norms per layer, 1 + w
  // convention, soft-capping, sliding window on alternating layers, local RoPE base).
  int sliding_window = 6;
  double attn_softcap = 5.0;    // gemma2
  double final_softcap = 3.0;   // gemma2
  double query_pre_attn_scalar = 24.0;
  nlohmann::json extra_config = nlohmann::json::object();  // merged into config.json last
  // MoE families (mixtral, qwen2_moe, qwen3_moe): experts per sparse layer, experts per token,
  // each expert's intermediate size, the shared expert's (qwen2_moe; 0: none).
  int experts = 4;
  int top_k = 2;
  int moe_ffn = 24;
  int shared_ffn = 40;
  DType dtype = DType::F32;
  std::uint32_t seed = 1;
  float weight_scale = 0.15f;
};

// Writes config.json and model.safetensors for a random model into `dir`.
void write_tiny_model(const fs::path& dir, const TinyModelSpec& spec);

// Writes a GPT-2 style byte-level BPE tokenizer.json into `dir`: ids 0.. are the printable
// ASCII characters '!'..'~' and then 'Ġ' (space), no merges, and the last id (vocab − 1) is
// the special "<|end|>". Needs 2 ≤ vocab ≤ 96.
void write_tiny_tokenizer(const fs::path& dir, int vocab);

// ../shared beside the project, or empty when absent.
fs::path shared_dir();
// Skips the current test (with a message) when ../shared is absent.
#define QUANT_REQUIRE_SHARED()                                                     \
  do {                                                                             \
    if (::quant::testing::shared_dir().empty())                                    \
      GTEST_SKIP() << "../shared is absent: skipping test that needs shared data"; \
  } while (0)

}  // namespace quant::testing
