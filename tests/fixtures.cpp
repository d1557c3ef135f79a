#include "fixtures.h"

#include <unistd.h>

#include <atomic>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <vector>

#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant::testing {

TempDir::TempDir() {
  static std::atomic<int> counter{0};
  std::random_device rd;
  path_ = fs::temp_directory_path() /
          ("quant-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + "-" +
           std::to_string(rd() % 100000));
  fs::create_directories(path_);
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

void write_tiny_tokenizer(const fs::path& dir, int vocab) {
  nlohmann::json v = nlohmann::json::object();
  for (int id = 0; id < vocab - 1; ++id) v[id < 94 ? std::string(1, static_cast<char>(33 + id)) : std::string("\xC4\xA0")] = id;
  const nlohmann::json tok = {
      {"model", {{"type", "BPE"}, {"vocab", v}, {"merges", nlohmann::json::array()}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"added_tokens", {{{"id", vocab - 1}, {"content", "<|end|>"}, {"special", true}}}}};
  write_file_atomic(dir / "tokenizer.json", tok.dump());
}

fs::path shared_dir() {
  const fs::path p = QUANT_SHARED_DIR;
  return fs::exists(p / "README.md") ? p : fs::path();
}

void write_tiny_model(const fs::path& dir, const TinyModelSpec& s) {
  fs::create_directories(dir);
  const int head_dim = s.head_dim > 0 ? s.head_dim : s.hidden / s.heads;
  const bool gemma = s.model_type == "gemma2" || s.model_type == "gemma3_text";
  const bool qk_norm = s.model_type == "qwen3" || s.model_type == "gemma3_text" || s.model_type == "qwen3_moe";
  static const std::map<std::string, std::string> kArch = {
      {"llama", "LlamaForCausalLM"}, {"mistral", "MistralForCausalLM"}, {"qwen2", "Qwen2ForCausalLM"},
      {"qwen3", "Qwen3ForCausalLM"}, {"gemma2", "Gemma2ForCausalLM"}, {"gemma3_text", "Gemma3ForCausalLM"},
      {"phi3", "Phi3ForCausalLM"}, {"mixtral", "MixtralForCausalLM"}, {"qwen2_moe", "Qwen2MoeForCausalLM"},
      {"qwen3_moe", "Qwen3MoeForCausalLM"}};
  const bool mixtral = s.model_type == "mixtral", qwen_moe = s.model_type == "qwen2_moe" || s.model_type == "qwen3_moe";
  const bool shared = s.model_type == "qwen2_moe" && s.shared_ffn > 0;
  const bool phi3 = s.model_type == "phi3";
  const auto arch = kArch.find(s.model_type);
  nlohmann::json config = {
      {"architectures", {arch == kArch.end() ? std::string("LlamaForCausalLM") : arch->second}}, {"model_type", s.model_type},
      {"hidden_size", s.hidden}, {"intermediate_size", s.intermediate},
      {"num_hidden_layers", s.layers}, {"num_attention_heads", s.heads},
      {"num_key_value_heads", s.kv_heads}, {"vocab_size", s.vocab},
      {"max_position_embeddings", s.ctx}, {"rms_norm_eps", 1e-5}, {"rope_theta", 10000.0},
      {"tie_word_embeddings", s.tied}, {"hidden_act", "silu"}, {"bos_token_id", 1},
      {"eos_token_id", 2}, {"attention_bias", s.attention_bias}, {"mlp_bias", false},
      {"torch_dtype", s.dtype == DType::F16 ? "float16" : s.dtype == DType::BF16 ? "bfloat16" : "float32"}};
  if (s.head_dim > 0 || s.model_type == "qwen3" || gemma) config["head_dim"] = head_dim;
  if (gemma) {
    config.erase("hidden_act");
    config["hidden_activation"] = "gelu_pytorch_tanh";
    config["query_pre_attn_scalar"] = s.query_pre_attn_scalar;
    config["sliding_window"] = s.sliding_window;
    if (s.model_type == "gemma2") {
      config["attn_logit_softcapping"] = s.attn_softcap;
      config["final_logit_softcapping"] = s.final_softcap;
    } else {
      config["rope_local_base_freq"] = 100.0;
      config["sliding_window_pattern"] = 2;
    }
  }
  if (phi3) config["sliding_window"] = s.sliding_window;
  if (mixtral) {
    config["num_local_experts"] = s.experts;
    config["num_experts_per_tok"] = s.top_k;
  }
  if (qwen_moe) {
    config["num_experts"] = s.experts;
    config["num_experts_per_tok"] = s.top_k;
    config["moe_intermediate_size"] = s.moe_ffn;
    config["norm_topk_prob"] = s.model_type == "qwen3_moe";
    if (s.model_type == "qwen2_moe") config["shared_expert_intermediate_size"] = s.shared_ffn;
  }
  for (const auto& [k, v] : s.extra_config.items()) config[k] = v;
  write_file_atomic(dir / "config.json", config.dump(2));

  std::mt19937 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  SafetensorsWriter w(dir);
  auto rand_tensor = [&](const std::string& name, std::vector<std::int64_t> shape, float scale,
                         float offset = 0.0f) {
    std::int64_t n = 1;
    for (auto d : shape) n *= d;
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = offset + scale * normal(rng);
    w.add_f32(name, s.dtype, shape, v);
  };
  const bool qwen2 = s.model_type == "qwen2" || s.model_type == "qwen2_moe";
  const bool qkv_bias = qwen2 || s.attention_bias;
  const bool o_bias = !qwen2 && s.attention_bias;
  const std::int64_t H = s.hidden, F = s.intermediate, qo = s.heads * head_dim,
                     kvo = s.kv_heads * head_dim;
  // Gemma multiplies embeddings by sqrt(hidden) and ties the head: smaller rows keep its logits sane.
  rand_tensor("model.embed_tokens.weight", {s.vocab, H}, gemma ? 0.25f : 1.0f);
  for (int i = 0; i < s.layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const float norm_center = gemma ? 0.0f : 1.0f;  // Gemma's norms multiply by 1 + w
    rand_tensor(p + "input_layernorm.weight", {H}, 0.1f, norm_center);
    rand_tensor(p + "post_attention_layernorm.weight", {H}, 0.1f, norm_center);
    if (gemma) {
      rand_tensor(p + "pre_feedforward_layernorm.weight", {H}, 0.1f, norm_center);
      rand_tensor(p + "post_feedforward_layernorm.weight", {H}, 0.1f, norm_center);
    }
    if (qk_norm) {
      rand_tensor(p + "self_attn.q_norm.weight", {head_dim}, 0.1f, norm_center);
      rand_tensor(p + "self_attn.k_norm.weight", {head_dim}, 0.1f, norm_center);
    }
    if (phi3) {  // Phi3Attention.qkv_proj = [q; k; v]
      rand_tensor(p + "self_attn.qkv_proj.weight", {qo + 2 * kvo, H}, s.weight_scale);
    } else {
      rand_tensor(p + "self_attn.q_proj.weight", {qo, H}, s.weight_scale);
      rand_tensor(p + "self_attn.k_proj.weight", {kvo, H}, s.weight_scale);
      rand_tensor(p + "self_attn.v_proj.weight", {kvo, H}, s.weight_scale);
    }
    rand_tensor(p + "self_attn.o_proj.weight", {H, qo}, s.weight_scale);
    if (qkv_bias) {
      rand_tensor(p + "self_attn.q_proj.bias", {qo}, 0.1f);
      rand_tensor(p + "self_attn.k_proj.bias", {kvo}, 0.1f);
      rand_tensor(p + "self_attn.v_proj.bias", {kvo}, 0.1f);
    }
    if (o_bias) rand_tensor(p + "self_attn.o_proj.bias", {H}, 0.1f);
    if (mixtral || qwen_moe) {  // every layer sparse (no mlp_only_layers here)
      const std::string block = p + (mixtral ? "block_sparse_moe." : "mlp.");
      const std::int64_t ffn = mixtral ? F : s.moe_ffn;
      rand_tensor(block + "gate.weight", {s.experts, H}, 1.0f);  // the router: spread-out logits
      for (int e = 0; e < s.experts; ++e) {
        const std::string x = block + "experts." + std::to_string(e) + ".";
        rand_tensor(x + (mixtral ? "w1" : "gate_proj") + ".weight", {ffn, H}, s.weight_scale);
        rand_tensor(x + (mixtral ? "w3" : "up_proj") + ".weight", {ffn, H}, s.weight_scale);
        rand_tensor(x + (mixtral ? "w2" : "down_proj") + ".weight", {H, ffn}, s.weight_scale);
      }
      if (shared) {
        rand_tensor(block + "shared_expert.gate_proj.weight", {s.shared_ffn, H}, s.weight_scale);
        rand_tensor(block + "shared_expert.up_proj.weight", {s.shared_ffn, H}, s.weight_scale);
        rand_tensor(block + "shared_expert.down_proj.weight", {H, s.shared_ffn}, s.weight_scale);
        rand_tensor(block + "shared_expert_gate.weight", {1, H}, 0.3f);
      }
      continue;
    }
    if (phi3) {  // Phi3MLP.gate_up_proj = [gate; up]
      rand_tensor(p + "mlp.gate_up_proj.weight", {2 * F, H}, s.weight_scale);
    } else {
      rand_tensor(p + "mlp.gate_proj.weight", {F, H}, s.weight_scale);
      rand_tensor(p + "mlp.up_proj.weight", {F, H}, s.weight_scale);
    }
    rand_tensor(p + "mlp.down_proj.weight", {H, F}, s.weight_scale);
  }
  rand_tensor("model.norm.weight", {H}, 0.1f, gemma ? 0.0f : 1.0f);
  if (!s.tied) rand_tensor("lm_head.weight", {s.vocab, H}, s.weight_scale);
  w.finish();
}

}  // namespace quant::testing
