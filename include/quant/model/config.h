// config.json of a decoder-only checkpoint: the Llama family (llama, mistral, qwen2) and the
// families that differ from it in norms, attention and MLP details (qwen3, gemma2, gemma3_text,
// phi3 with its fused projections);
// docs/architectures.md gives each family's rules and the transformers code they come from.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace quant {

namespace fs = std::filesystem;

// rope_scaling as transformers' modeling_rope_utils reads it (docs/architectures.md "RoPE
// scaling"): none, linear, llama3, yarn, longrope.
struct RopeScaling {
  std::string type = "none";  // none | linear | llama3 | yarn | longrope | freq_factors
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // llama3: from rope_scaling (default 8192); yarn: rope_scaling's, else max_position_embeddings;
  // longrope: rope_scaling's, else the config's top-level value (Phi3Config default 4096).
  std::int64_t original_max_position_embeddings = 8192;
  // yarn and longrope: cos and sin are multiplied by this (transformers' attention_scaling);
  // computed from the config when it gives none.
  double attention_factor = 1.0;
  bool attention_factor_given = false;  // the config set attention_factor (or mscale/mscale_all_dim)
  double beta_fast = 32.0;              // yarn
  double beta_slow = 1.0;               // yarn
  bool truncate = true;                 // yarn: floor/ceil the correction range
  std::vector<double> long_factor, short_factor;  // longrope: one per rotary frequency
  // type "freq_factors": a divisor per frequency, as llama.cpp applies a GGUF's
  // rope_freqs.weight (how convert_hf_to_gguf.py stores Llama 3.1's scaling).
  std::vector<double> freq_factors;
};

// Mixture-of-experts details (docs/architectures.md "MoE families"): a sparse layer replaces the
// MLP by a router over n_experts SwiGLU experts of expert_ffn rows, each token going to the
// top_k experts of the router's softmax, plus (qwen2_moe) a shared expert gated by a sigmoid.
struct MoeConfig {
  std::int64_t n_experts = 0;      // 0: a dense model
  std::int64_t top_k = 0;          // num_experts_per_tok
  bool norm_topk_prob = true;      // the top-k probabilities renormalized to sum 1 (Mixtral: always)
  std::int64_t expert_ffn = 0;     // each expert's intermediate size
  std::int64_t shared_ffn = 0;     // the shared expert's (qwen2_moe), 0: none
  std::vector<bool> layer_moe;     // per layer: a sparse block (else the dense MLP of intermediate_size)
  std::string block;               // "block_sparse_moe." (mixtral) or "mlp."
  std::array<std::string, 3> expert_names;  // the experts' gate, up, down linears: w1, w3, w2 or *_proj
};

struct ModelConfig {
  std::string model_type;
  std::int64_t hidden_size = 0;
  std::int64_t intermediate_size = 0;
  std::int64_t n_layers = 0;
  std::int64_t n_heads = 0;
  std::int64_t n_kv_heads = 0;
  std::int64_t head_dim = 0;
  std::int64_t rotary_dim = 0;  // leading dims of each head that RoPE rotates (head_dim · partial_rotary_factor, phi3)
  std::int64_t vocab_size = 0;
  std::int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // llama attention_bias, or always for qwen2
  bool o_bias = false;    // llama attention_bias only
  bool mlp_bias = false;
  // Family details (defaults: plain Llama). See docs/architectures.md.
  bool fused_qkv_gate_up = false;  // phi3: q/k/v and gate/up stored as qkv_proj and gate_up_proj
  bool qk_norm = false;          // RMSNorm over head_dim of each q and k head, before RoPE (qwen3, gemma3)
  bool sandwich_norms = false;   // post-attention and post-feedforward norms on each block's output (gemma2/3)
  float norm_offset = 0.0f;      // RMSNorm multiplies by (offset + w): 1 for Gemma
  bool gelu_tanh = false;        // MLP activation gelu_pytorch_tanh instead of SiLU
  float embed_scale = 1.0f;      // embeddings multiplied by this (sqrt(hidden_size) for Gemma)
  double attn_scale = 0.0;       // softmax scale (1/sqrt(head_dim), or query_pre_attn_scalar^-0.5)
  double attn_softcap = 0.0;     // scores → cap·tanh(scores/cap) when > 0 (gemma2)
  double final_softcap = 0.0;    // logits → cap·tanh(logits/cap) when > 0 (gemma2)
  std::int64_t sliding_window = 0;    // a sliding layer's query sees keys less than this far back
  std::vector<bool> layer_sliding;    // per layer: sliding-window attention (empty: none)
  double rope_local_theta = 0.0;      // RoPE base of sliding layers when it differs (gemma3), else 0
  bool is_sliding(std::int64_t layer) const {
    return sliding_window > 0 && layer >= 0 && layer < static_cast<std::int64_t>(layer_sliding.size()) &&
           layer_sliding[static_cast<std::size_t>(layer)];
  }
  MoeConfig moe;
  bool is_moe() const { return moe.n_experts > 0; }
  bool is_moe_layer(std::int64_t layer) const {
    return is_moe() && layer >= 0 && layer < static_cast<std::int64_t>(moe.layer_moe.size()) && moe.layer_moe[static_cast<std::size_t>(layer)];
  }
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
inline constexpr const char* kSupportedModelTypes = "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3, mixtral, qwen2_moe, qwen3_moe";

}  // namespace quant
