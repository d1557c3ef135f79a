// config.json of a Llama-family checkpoint (model_type llama, mistral, qwen2).
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace quant {

namespace fs = std::filesystem;

// rope_scaling, recorded as given; "llama3" is applied by the forward pass, "linear" too.
struct RopeScaling {
  std::string type = "none";  // none | linear | llama3 | (other: recorded, rejected by forward)
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  std::int64_t original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t n_layers = 0;
  std::int64_t n_heads = 0;
  std::int64_t n_kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // llama attention_bias, or always for qwen2
  bool o_bias = false;    // llama attention_bias only
  bool mlp_bias = false;
  std::string torch_dtype;  // as written, e.g. "float16"
  std::int64_t bos_token_id = -1;
  std::int64_t eos_token_id = -1;
  nlohmann::json quantization_config;  // null when the checkpoint is not quantized
  nlohmann::json raw;                  // the whole config.json

  // Parses and validates; `source` names the file in errors.
  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load(const fs::path& model_dir);
};

// The model_type values this toolkit understands.
inline constexpr const char* kSupportedModelTypes = "llama, mistral, qwen2";

}  // namespace quant
