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

// layer_types (transformers ≥ 4.53): one "sliding_attention" / "full_attention" per layer.
bool read_layer_types(const json& j, const std::string& source, ModelConfig& c) {
  auto lt = j.find("layer_types");
  if (lt == j.end() || lt->is_null()) return false;
  if (!lt->is_array() || static_cast<std::int64_t>(lt->size()) != c.n_layers) {
    fail("{}: 'layer_types' must list one entry per layer ({})", source, c.n_layers);
  }
  c.layer_sliding.assign(static_cast<std::size_t>(c.n_layers), false);
  for (std::size_t i = 0; i < lt->size(); ++i) {
    const json& t = (*lt)[i];
    if (t != "sliding_attention" && t != "full_attention") {
      fail("{}: layer_types[{}] = {} (expected \"sliding_attention\" or \"full_attention\")", source, i, t.dump());
    }
    c.layer_sliding[i] = t == "sliding_attention";
  }
  return true;
}

// The MoE families (transformers' MixtralConfig/MixtralSparseMoeBlock, Qwen2MoeConfig/
// Qwen2MoeSparseMoeBlock/Qwen2MoeDecoderLayer, Qwen3MoeConfig/Qwen3MoeSparseMoeBlock).
void moe_details(const json& j, const std::string& source, ModelConfig& c) {
  MoeConfig& m = c.moe;
  const bool mixtral = c.model_type == "mixtral";
  const auto positive_int = [&](const char* key, std::int64_t fallback) {
    const std::int64_t v = get_int(j, key, source, false, fallback);
    if (v <= 0 || v > (std::int64_t{1} << 31)) fail("{}: '{}' must be positive, found {}", source, key, v);
    return v;
  };
  if (mixtral) {
    // MixtralConfig: num_local_experts 8, num_experts_per_tok 2; every layer sparse; the top-k
    // weights always renormalized; experts w1 (gate), w3 (up), w2 (down) of intermediate_size.
    m.n_experts = positive_int("num_local_experts", 8);
    m.top_k = positive_int("num_experts_per_tok", 2);
    m.norm_topk_prob = true;
    m.expert_ffn = c.intermediate_size;
    m.block = "block_sparse_moe.";
    m.expert_names = {"w1", "w3", "w2"};
    m.layer_moe.assign(static_cast<std::size_t>(c.n_layers), true);
  } else {
    // Qwen2MoeConfig: 60 experts, top 4, moe_intermediate_size 1408, shared expert 5632;
    // Qwen3MoeConfig: 128, top 8, 768, none. norm_topk_prob false by default in both. A layer
    // is sparse unless in mlp_only_layers, and when (i + 1) % decoder_sparse_step == 0.
    const bool qwen2 = c.model_type == "qwen2_moe";
    m.n_experts = positive_int("num_experts", qwen2 ? 60 : 128);
    m.top_k = positive_int("num_experts_per_tok", qwen2 ? 4 : 8);
    m.norm_topk_prob = get_bool(j, "norm_topk_prob", source, false);
    m.expert_ffn = positive_int("moe_intermediate_size", qwen2 ? 1408 : 768);
    if (qwen2) m.shared_ffn = positive_int("shared_expert_intermediate_size", 5632);
    m.block = "mlp.";
    m.expert_names = {"gate_proj", "up_proj", "down_proj"};
    const std::int64_t step = positive_int("decoder_sparse_step", 1);
    std::set<std::int64_t> dense;
    if (auto it = j.find("mlp_only_layers"); it != j.end() && !it->is_null()) {
      if (!it->is_array()) fail("{}: 'mlp_only_layers' must be a list of layer indices", source);
      for (const json& v : *it) {
        if (!v.is_number_integer() || v.get<std::int64_t>() < 0 || v.get<std::int64_t>() >= c.n_layers) {
          fail("{}: 'mlp_only_layers' holds {}, not a layer index below {}", source, v.dump(), c.n_layers);
        }
        dense.insert(v.get<std::int64_t>());
      }
    }
    m.layer_moe.assign(static_cast<std::size_t>(c.n_layers), false);
    for (std::int64_t i = 0; i < c.n_layers; ++i) m.layer_moe[static_cast<std::size_t>(i)] = !dense.count(i) && (i + 1) % step == 0;
  }
  if (m.top_k > m.n_experts) fail("{}: num_experts_per_tok ({}) exceeds the number of experts ({})", source, m.top_k, m.n_experts);
}

// qwen3: Qwen3Attention (q_norm/k_norm); gemma2: Gemma2Model/Gemma2Attention/Gemma2RMSNorm;
// gemma3_text: Gemma3TextModel/Gemma3Attention (transformers' modeling_<family>.py).
void family_details(const json& j, const std::string& source, ModelConfig& c) {
  c.attn_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  const bool gemma2 = c.model_type == "gemma2", gemma3 = c.model_type == "gemma3_text";
  if (c.model_type == "mixtral" || c.model_type == "qwen2_moe" || c.model_type == "qwen3_moe") moe_details(j, source, c);
  if (c.model_type == "qwen3" || c.model_type == "qwen3_moe") {
    c.qk_norm = true;
    if (get_bool(j, "use_sliding_window", source, false)) {
      fail("{}: use_sliding_window = true is not supported for {} (transformers ignores it for Qwen3 too)", source, c.model_type);
    }
  }
  if (c.model_type == "phi3") {
    // Phi3Model: fused qkv_proj/gate_up_proj; every layer uses the sliding-window mask when
    // sliding_window is set (create_sliding_window_causal_mask).
    c.fused_qkv_gate_up = true;
    c.sliding_window = get_int(j, "sliding_window", source, false, 0);
    if (c.sliding_window < 0) fail("{}: 'sliding_window' must be positive, found {}", source, c.sliding_window);
    c.layer_sliding.assign(static_cast<std::size_t>(c.n_layers), c.sliding_window > 0);
    return;
  }
  if (c.model_type == "mistral" || c.model_type == "mixtral") {
    // MistralConfig.sliding_window defaults to 4096 (null: none), MixtralConfig's to none;
    // MistralModel/MixtralModel mask every layer with it (create_sliding_window_causal_mask).
    const bool has_default = c.model_type == "mistral" && !j.contains("sliding_window");
    c.sliding_window = get_int(j, "sliding_window", source, false, has_default ? 4096 : 0);
    if (c.sliding_window < 0) fail("{}: 'sliding_window' must be positive, found {}", source, c.sliding_window);
    c.layer_sliding.assign(static_cast<std::size_t>(c.n_layers), c.sliding_window > 0);
    return;
  }
  if (c.model_type == "qwen2" || c.model_type == "qwen2_moe") {
    // Qwen2Config (and Qwen2MoeConfig): sliding_window applies only with use_sliding_window, and then to the layers
    // from max_window_layers on (its layer_types default), unless layer_types says otherwise.
    if (!get_bool(j, "use_sliding_window", source, false)) return;
    c.sliding_window = get_int(j, "sliding_window", source, false, 4096);
    if (c.sliding_window < 0) fail("{}: 'sliding_window' must be positive, found {}", source, c.sliding_window);
    const std::int64_t from = get_int(j, "max_window_layers", source, false, 28);
    c.layer_sliding.assign(static_cast<std::size_t>(c.n_layers), false);
    for (std::int64_t i = from < 0 ? 0 : from; i < c.n_layers; ++i) c.layer_sliding[static_cast<std::size_t>(i)] = true;
    read_layer_types(j, source, c);
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
  if (!read_layer_types(j, source, c)) {
    c.layer_sliding.assign(static_cast<std::size_t>(c.n_layers), false);
    const std::int64_t pattern = gemma2 ? 2 : get_int(j, "sliding_window_pattern", source, false, 6);
    if (pattern <= 0) fail("{}: 'sliding_window_pattern' must be positive, found {}", source, pattern);
    // Gemma 2: the even layers; Gemma 3: all but every pattern-th.
    for (std::int64_t i = 0; i < c.n_layers; ++i) {
      c.layer_sliding[static_cast<std::size_t>(i)] = gemma2 ? i % 2 == 0 : (i + 1) % pattern != 0;
    }
  }
  if (gemma3) {
    c.rope_local_theta = get_num(j, "rope_local_base_freq", source, 10000.0);
    if (!(c.rope_local_theta > 0 && std::isfinite(c.rope_local_theta))) {
      fail("{}: 'rope_local_base_freq' must be positive, found {}", source, c.rope_local_theta);
    }
  }
}

double positive(const json& rs, const char* key, const std::string& source, double fallback) {
  const double v = get_num(rs, key, source, fallback);
  if (!(v > 0 && std::isfinite(v))) fail("{}: 'rope_scaling.{}' must be a positive finite number, found {}", source, key, v);
  return v;
}

std::vector<double> factor_list(const json& rs, const char* key, const std::string& source, std::int64_t n) {
  auto it = rs.find(key);
  if (it == rs.end() || !it->is_array()) fail("{}: rope_scaling longrope needs '{}' (a list of {} numbers)", source, key, n);
  std::vector<double> out;
  for (const json& v : *it) {
    if (!v.is_number() || !(v.get<double>() > 0) || !std::isfinite(v.get<double>())) {
      fail("{}: 'rope_scaling.{}' holds {}, not a positive number", source, key, v.dump());
    }
    out.push_back(v.get<double>());
  }
  if (static_cast<std::int64_t>(out.size()) != n) {
    fail("{}: 'rope_scaling.{}' has {} entries, but the rotary dims need {}", source, key, out.size(), n);
  }
  return out;
}

// rope_scaling as transformers' modeling_rope_utils computes it (rope_config_validation and the
// _compute_*_parameters functions; docs/architectures.md "RoPE scaling").
void parse_rope_scaling(const json& j, const std::string& source, ModelConfig& c) {
  auto rs = j.find("rope_scaling");
  if (rs == j.end() || rs->is_null()) return;
  if (!rs->is_object()) fail("{}: 'rope_scaling' must be an object", source);
  const auto t = rs->contains("rope_type") ? rs->find("rope_type") : rs->find("type");
  if (t != rs->end() && !t->is_string()) fail("{}: 'rope_scaling.{}' must be a string, found {}", source, t.key(), t->dump());
  std::string type = t == rs->end() ? std::string("none") : t->get<std::string>();
  if (type == "default") type = "none";
  if (type == "su") type = "longrope";  // Phi-3's first name for it
  RopeScaling& r = c.rope_scaling;
  r.type = type;
  if (type == "none") return;
  if (type != "linear" && type != "llama3" && type != "yarn" && type != "longrope") {
    fail("{}: rope_scaling type '{}' is not supported (supported: linear, llama3, yarn, longrope)", source, type);
  }
  const std::int64_t top_original = get_int(j, "original_max_position_embeddings", source, false, 0);
  const std::int64_t own_original = get_int(*rs, "original_max_position_embeddings", source, false, 0);
  // transformers warns on factor < 1; a factor ≤ 0 or NaN would make inf/NaN frequencies.
  if (type != "longrope") r.factor = positive(*rs, "factor", source, 1.0);
  if (type == "linear") return;
  if (type == "llama3") {
    r.low_freq_factor = positive(*rs, "low_freq_factor", source, 1.0);
    r.high_freq_factor = positive(*rs, "high_freq_factor", source, 4.0);
    r.original_max_position_embeddings = own_original > 0 ? own_original : 8192;
    if (!(r.low_freq_factor < r.high_freq_factor)) {
      fail("{}: rope_scaling llama3 needs 0 < low_freq_factor < high_freq_factor, found {} and {}", source, r.low_freq_factor, r.high_freq_factor);
    }
    return;
  }
  const auto mscale_of = [](double scale, double m) { return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0; };
  if (type == "yarn") {
    // _compute_yarn_parameters: correction range from original_max_position_embeddings (the
    // config's max_position_embeddings when rope_scaling has none); attention_factor, else
    // mscale/mscale_all_dim's ratio, else 0.1·ln(factor) + 1; beta_fast 32, beta_slow 1.
    r.original_max_position_embeddings = own_original > 0 ? own_original : c.max_position_embeddings;
    r.beta_fast = positive(*rs, "beta_fast", source, 32.0);
    r.beta_slow = positive(*rs, "beta_slow", source, 1.0);
    r.truncate = get_bool(*rs, "truncate", source, true);
    const double mscale = get_num(*rs, "mscale", source, 0.0), mscale_all = get_num(*rs, "mscale_all_dim", source, 0.0);
    r.attention_factor_given = rs->contains("attention_factor") && !(*rs)["attention_factor"].is_null();
    if (r.attention_factor_given) {
      r.attention_factor = positive(*rs, "attention_factor", source, 1.0);
    } else if (mscale != 0 && mscale_all != 0) {
      r.attention_factor = mscale_of(r.factor, mscale) / mscale_of(r.factor, mscale_all);
      r.attention_factor_given = true;
    } else {
      r.attention_factor = mscale_of(r.factor, 1.0);
    }
    return;
  }
  // longrope (_compute_longrope_parameters, Phi-3 128k): short_factor while a sequence fits in
  // original_max_position_embeddings, long_factor beyond; factor = max_position_embeddings /
  // original; attention_factor sqrt(1 + ln(factor) / ln(original)) when not given.
  r.original_max_position_embeddings = own_original > 0 ? own_original : top_original > 0 ? top_original : 4096;
  r.factor = static_cast<double>(c.max_position_embeddings) / static_cast<double>(r.original_max_position_embeddings);
  r.long_factor = factor_list(*rs, "long_factor", source, c.rotary_dim / 2);
  r.short_factor = factor_list(*rs, "short_factor", source, c.rotary_dim / 2);
  r.attention_factor_given = rs->contains("attention_factor") && !(*rs)["attention_factor"].is_null();
  r.attention_factor = r.attention_factor_given ? positive(*rs, "attention_factor", source, 1.0)
                       : r.factor <= 1 ? 1.0
                                       : std::sqrt(1.0 + std::log(r.factor) / std::log(static_cast<double>(r.original_max_position_embeddings)));
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: config is not a JSON object", source);
  ModelConfig c;
  c.raw = j;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) fail("{}: missing 'model_type'", source);
  c.model_type = mt->get<std::string>();
  static const std::set<std::string> kTypes = {"llama",  "mistral", "qwen2",   "qwen3",     "gemma2",
                                               "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe"};
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
  // partial_rotary_factor: Phi3 rotates the first int(head_dim · factor) dims of each head
  // (apply_rotary_pos_emb's q_rot/q_pass split); the other families rotate the whole head.
  const double partial = get_num(j, "partial_rotary_factor", source, 1.0);
  if (partial != 1.0 && c.model_type != "phi3") {
    fail("{}: partial_rotary_factor {} is not supported for {} (only phi3 rotates part of each head)", source, partial, c.model_type);
  }
  c.rotary_dim = static_cast<std::int64_t>(static_cast<double>(c.head_dim) * partial);
  if (!(partial > 0 && partial <= 1) || c.rotary_dim <= 0 || c.rotary_dim % 2 != 0) {
    fail("{}: partial_rotary_factor {} gives {} rotary dims of head_dim {} (must be positive and even)", source, partial, c.rotary_dim, c.head_dim);
  }
  c.rms_norm_eps = get_num(j, "rms_norm_eps", source, 1e-6);
  // Qwen3Config, Gemma3TextConfig and MixtralConfig default rope_theta to 10^6, the others to 10^4.
  const bool theta_1e6 = c.model_type == "qwen3" || c.model_type == "gemma3_text" || c.model_type == "mixtral";
  c.rope_theta = get_num(j, "rope_theta", source, theta_1e6 ? 1e6 : 10000.0);
  if (!(c.rms_norm_eps >= 0 && c.rms_norm_eps < 1)) fail("{}: 'rms_norm_eps' must be in [0, 1), found {}", source, c.rms_norm_eps);
  if (!(c.rope_theta > 0 && std::isfinite(c.rope_theta))) fail("{}: 'rope_theta' must be positive and finite, found {}", source, c.rope_theta);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", source, gemma);  // Gemma*Config default true
  const bool attention_bias = get_bool(j, "attention_bias", source, false);
  // qwen2: q/k/v biases always (Qwen2Attention), qwen2_moe: qkv_bias (Qwen2MoeConfig default
  // true); qwen3/gemma/mixtral: attention_bias (default false).
  const bool qwen2 = c.model_type == "qwen2" || c.model_type == "qwen2_moe";
  c.qkv_bias = c.model_type == "qwen2" ? true : c.model_type == "qwen2_moe" ? get_bool(j, "qkv_bias", source, true) : attention_bias;
  c.o_bias = qwen2 ? false : attention_bias;
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

  parse_rope_scaling(j, source, c);
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
