#include "quant/model/config.h"

#include <cmath>
#include <set>

#include "quant/core/error.h"
#include "quant/io/io.h"

namespace quant {

using nlohmann::json;

namespace {

std::int64_t get_int(const json& j, const char* key, const std::string& source, bool required,
                     std::int64_t fallback = 0) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) fail("{}: missing '{}'", source, key);
    return fallback;
  }
  if (!it->is_number_integer()) fail("{}: '{}' must be an integer, found {}", source, key, it->dump());
  return it->get<std::int64_t>();
}

double get_num(const json& j, const char* key, const std::string& source, double fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_number()) fail("{}: '{}' must be a number, found {}", source, key, it->dump());
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& source, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("{}: '{}' must be true or false, found {}", source, key, it->dump());
  return it->get<bool>();
}

std::int64_t first_id(const json& j, const char* key, const std::string& source) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return -1;
  if (it->is_array() && !it->empty()) return get_int(json{{"x", (*it)[0]}}, "x", source, true);
  return get_int(j, key, source, false, -1);
}

// qwen3: Qwen3Attention (q_norm/k_norm); gemma2: Gemma2Model/Gemma2Attention/Gemma2RMSNorm;
// gemma3_text: Gemma3TextModel/Gemma3Attention (transformers' modeling_<family>.py).
void family_details(const json& j, const std::string& source, ModelConfig& c) {
  c.attn_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  const bool gemma2 = c.model_type == "gemma2", gemma3 = c.model_type == "gemma3_text";
  if (c.model_type == "qwen3") {
    c.qk_norm = true;
    if (get_bool(j, "use_sliding_window", source, false)) {
      fail("{}: use_sliding_window = true is not supported for qwen3 (transformers ignores it for Qwen3 too)", source);
    }
  }
  if (c.model_type == "phi3") {
    // Phi3Model: fused qkv_proj/gate_up_proj; every layer uses the sliding-window mask when
    // sliding_window is set (create_sliding_window_causal_mask); partial RoPE (Phi-4-mini) is not
    // implemented yet.
    c.fused_qkv_gate_up = true;
    const double partial = get_num(j, "partial_rotary_factor", source, 1.0);
    if (partial != 1.0) fail("{}: partial_rotary_factor {} is not supported yet (only 1.0)", source, partial);
    c.sliding_window = get_int(j, "sliding_window", source, false, 0);
    if (c.sliding_window < 0) fail("{}: 'sliding_window' must be positive, found {}", source, c.sliding_window);
    c.layer_sliding.assign(static_cast<std::size_t>(c.n_layers), c.sliding_window > 0);
    return;
  }
  if (!gemma2 && !gemma3) return;
  c.norm_offset = 1.0f;
  c.sandwich_norms = true;
  c.qk_norm = gemma3;
  c.embed_scale = static_cast<float>(std::sqrt(static_cast<double>(c.hidden_size)));
  const double qpas = get_num(j, "query_pre_attn_scalar", source, 256.0);
  if (!(qpas > 0 && std::isfinite(qpas))) fail("{}: 'query_pre_attn_scalar' must be positive, found {}", source, qpas);
  c.attn_scale = 1.0 / std::sqrt(qpas);
  c.attn_softcap = get_num(j, "attn_logit_softcapping", source, gemma2 ? 50.0 : 0.0);
  c.final_softcap = get_num(j, "final_logit_softcapping", source, gemma2 ? 30.0 : 0.0);
  for (double cap : {c.attn_softcap, c.final_softcap}) {
    if (!(cap >= 0 && std::isfinite(cap))) fail("{}: logit soft-capping must be a positive number or null, found {}", source, cap);
  }
  c.sliding_window = get_int(j, "sliding_window", source, false, 4096);
  if (c.sliding_window < 0) fail("{}: 'sliding_window' must be positive, found {}", source, c.sliding_window);
  c.layer_sliding.assign(static_cast<std::size_t>(c.n_layers), false);
  if (auto lt = j.find("layer_types"); lt != j.end() && !lt->is_null()) {
    if (!lt->is_array() || static_cast<std::int64_t>(lt->size()) != c.n_layers) {
      fail("{}: 'layer_types' must list one entry per layer ({})", source, c.n_layers);
    }
    for (std::size_t i = 0; i < lt->size(); ++i) {
      const json& t = (*lt)[i];
      if (t != "sliding_attention" && t != "full_attention") {
        fail("{}: layer_types[{}] = {} (expected \"sliding_attention\" or \"full_attention\")", source, i, t.dump());
      }
      c.layer_sliding[i] = t == "sliding_attention";
    }
  } else if (gemma2) {
    for (std::int64_t i = 0; i < c.n_layers; ++i) c.layer_sliding[static_cast<std::size_t>(i)] = i % 2 == 0;
  } else {
    const std::int64_t pattern = get_int(j, "sliding_window_pattern", source, false, 6);
    if (pattern <= 0) fail("{}: 'sliding_window_pattern' must be positive, found {}", source, pattern);
    for (std::int64_t i = 0; i < c.n_layers; ++i) c.layer_sliding[static_cast<std::size_t>(i)] = (i + 1) % pattern != 0;
  }
  if (gemma3) {
    c.rope_local_theta = get_num(j, "rope_local_base_freq", source, 10000.0);
    if (!(c.rope_local_theta > 0 && std::isfinite(c.rope_local_theta))) {
      fail("{}: 'rope_local_base_freq' must be positive, found {}", source, c.rope_local_theta);
    }
  }
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: config is not a JSON object", source);
  ModelConfig c;
  c.raw = j;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) fail("{}: missing 'model_type'", source);
  c.model_type = mt->get<std::string>();
  static const std::set<std::string> kTypes = {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3"};
  if (!kTypes.count(c.model_type)) {
    fail("{}: unsupported model_type '{}' (supported: {})", source, c.model_type, kSupportedModelTypes);
  }
  c.hidden_size = get_int(j, "hidden_size", source, true);
  c.intermediate_size = get_int(j, "intermediate_size", source, true);
  c.n_layers = get_int(j, "num_hidden_layers", source, true);
  c.n_heads = get_int(j, "num_attention_heads", source, true);
  c.n_kv_heads = get_int(j, "num_key_value_heads", source, false, c.n_heads);
  c.vocab_size = get_int(j, "vocab_size", source, true);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", source, false, 2048);
  for (auto [v, name] : {std::pair{c.hidden_size, "hidden_size"}, {c.intermediate_size, "intermediate_size"},
                         {c.n_layers, "num_hidden_layers"}, {c.n_heads, "num_attention_heads"},
                         {c.n_kv_heads, "num_key_value_heads"}, {c.vocab_size, "vocab_size"},
                         {c.max_position_embeddings, "max_position_embeddings"}}) {
    if (v <= 0) fail("{}: '{}' must be positive, found {}", source, name, v);
    if (v > (std::int64_t{1} << 31)) fail("{}: '{}' = {} is implausibly large", source, name, v);
  }
  if (c.n_heads % c.n_kv_heads != 0) {
    fail("{}: num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", source,
         c.n_heads, c.n_kv_heads);
  }
  const bool gemma = c.model_type == "gemma2" || c.model_type == "gemma3_text";
  // Families whose configuration class has its own head_dim default (Qwen3Config 128,
  // Gemma2Config/Gemma3TextConfig 256); the Llama family derives it from hidden/heads.
  const std::int64_t family_head_dim = c.model_type == "qwen3" ? 128 : gemma ? 256 : 0;
  const bool has_head_dim = (j.contains("head_dim") && !j["head_dim"].is_null()) || family_head_dim > 0;
  if (!has_head_dim && c.hidden_size % c.n_heads != 0) {
    fail("{}: hidden_size ({}) is not a multiple of num_attention_heads ({})", source, c.hidden_size, c.n_heads);
  }
  c.head_dim = get_int(j, "head_dim", source, false, family_head_dim > 0 ? family_head_dim : c.hidden_size / c.n_heads);
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) fail("{}: head_dim must be positive and even, found {}", source, c.head_dim);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", source, 1e-6);
  // Qwen3Config and Gemma3TextConfig default rope_theta to 10^6, the others to 10^4.
  c.rope_theta = get_num(j, "rope_theta", source, c.model_type == "qwen3" || c.model_type == "gemma3_text" ? 1e6 : 10000.0);
  if (!(c.rms_norm_eps >= 0 && c.rms_norm_eps < 1)) fail("{}: 'rms_norm_eps' must be in [0, 1), found {}", source, c.rms_norm_eps);
  if (!(c.rope_theta > 0 && std::isfinite(c.rope_theta))) fail("{}: 'rope_theta' must be positive and finite, found {}", source, c.rope_theta);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", source, gemma);  // Gemma*Config default true
  const bool attention_bias = get_bool(j, "attention_bias", source, false);
  c.qkv_bias = c.model_type == "qwen2" ? true : attention_bias;  // qwen3/gemma: attention_bias (default false)
  c.o_bias = c.model_type == "qwen2" ? false : attention_bias;
  c.mlp_bias = get_bool(j, "mlp_bias", source, false);
  // Gemma's MLP reads hidden_activation (Gemma2MLP: ACT2FN[config.hidden_activation]); the
  // others hidden_act.
  const char* act_key = gemma ? "hidden_activation" : "hidden_act";
  const std::string act_default = gemma ? "gelu_pytorch_tanh" : "silu";
  std::string act = act_default;
  if (auto a = j.find(act_key); a != j.end() && !a->is_null()) {
    if (!a->is_string()) fail("{}: '{}' must be a string, found {}", source, act_key, a->dump());
    act = a->get<std::string>();
  }
  if (act != act_default) fail("{}: unsupported {} \"{}\" for {} (supported: {})", source, act_key, act, c.model_type, act_default);
  c.gelu_tanh = gemma;
  family_details(j, source, c);
  if (j.contains("torch_dtype") && j["torch_dtype"].is_string()) c.torch_dtype = j["torch_dtype"];
  c.bos_token_id = first_id(j, "bos_token_id", source);
  c.eos_token_id = first_id(j, "eos_token_id", source);

  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    if (!rs->is_object()) fail("{}: 'rope_scaling' must be an object", source);
    const auto t = rs->contains("rope_type") ? rs->find("rope_type") : rs->find("type");
    if (t != rs->end() && !t->is_string()) fail("{}: 'rope_scaling.{}' must be a string, found {}", source, t.key(), t->dump());
    std::string type = t == rs->end() ? std::string("none") : t->get<std::string>();
    c.rope_scaling.type = type;
    c.rope_scaling.factor = get_num(*rs, "factor", source, 1.0);
    c.rope_scaling.low_freq_factor = get_num(*rs, "low_freq_factor", source, 1.0);
    c.rope_scaling.high_freq_factor = get_num(*rs, "high_freq_factor", source, 4.0);
    c.rope_scaling.original_max_position_embeddings =
        get_int(*rs, "original_max_position_embeddings", source, false, 8192);
    if (type == "default") c.rope_scaling.type = "none";
    // transformers' modeling_rope_utils validators: factor ≥ 1 (it warns; a factor ≤ 0 or NaN
    // divides RoPE's frequencies into inf/NaN, so quant refuses it), llama3 needs
    // low_freq_factor < high_freq_factor, original_max_position_embeddings > 0.
    const auto& rsc = c.rope_scaling;
    if (c.rope_scaling.type != "none") {
      if (!(rsc.factor > 0 && std::isfinite(rsc.factor))) fail("{}: 'rope_scaling.factor' must be a positive finite number, found {}", source, rsc.factor);
      if (rsc.original_max_position_embeddings <= 0) {
        fail("{}: 'rope_scaling.original_max_position_embeddings' must be positive, found {}", source, rsc.original_max_position_embeddings);
      }
      if (type == "llama3" && !(rsc.low_freq_factor > 0 && rsc.low_freq_factor < rsc.high_freq_factor && std::isfinite(rsc.high_freq_factor))) {
        fail("{}: rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor, found {} and {}", source, rsc.low_freq_factor, rsc.high_freq_factor);
      }
    }
  }
  if (auto q = j.find("quantization_config"); q != j.end() && !q->is_null()) {
    if (!q->is_object()) fail("{}: 'quantization_config' must be an object", source);
    c.quantization_config = *q;
  }
  return c;
}

ModelConfig ModelConfig::load(const fs::path& model_dir) {
  const fs::path path = model_dir / "config.json";
  if (!fs::exists(path)) fail("{}: no config.json (expected a HuggingFace model directory)", model_dir.string());
  const json j = read_json_file(path);
  try {
    return from_json(j, path.string());
  } catch (const json::exception& e) {  // a field of an unexpected JSON type not checked above
    fail("{}: malformed config: {}", path.string(), e.what());
  }
}

}  // namespace quant
