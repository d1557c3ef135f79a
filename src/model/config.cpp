#include "quant/model/config.h"

#include <cmath>

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

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& source) {
  if (!j.is_object()) fail("{}: config is not a JSON object", source);
  ModelConfig c;
  c.raw = j;
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string()) fail("{}: missing 'model_type'", source);
  c.model_type = mt->get<std::string>();
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2") {
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
  const bool has_head_dim = j.contains("head_dim") && !j["head_dim"].is_null();
  if (!has_head_dim && c.hidden_size % c.n_heads != 0) {
    fail("{}: hidden_size ({}) is not a multiple of num_attention_heads ({})", source, c.hidden_size, c.n_heads);
  }
  c.head_dim = get_int(j, "head_dim", source, false, c.hidden_size / c.n_heads);
  if (c.head_dim <= 0 || c.head_dim % 2 != 0) fail("{}: head_dim must be positive and even, found {}", source, c.head_dim);
  c.rms_norm_eps = get_num(j, "rms_norm_eps", source, 1e-6);
  c.rope_theta = get_num(j, "rope_theta", source, 10000.0);
  if (!(c.rms_norm_eps >= 0 && c.rms_norm_eps < 1)) fail("{}: 'rms_norm_eps' must be in [0, 1), found {}", source, c.rms_norm_eps);
  if (!(c.rope_theta > 0 && std::isfinite(c.rope_theta))) fail("{}: 'rope_theta' must be positive and finite, found {}", source, c.rope_theta);
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", source, false);
  const bool attention_bias = get_bool(j, "attention_bias", source, false);
  c.qkv_bias = c.model_type == "qwen2" ? true : attention_bias;
  c.o_bias = c.model_type == "qwen2" ? false : attention_bias;
  c.mlp_bias = get_bool(j, "mlp_bias", source, false);
  if (j.contains("hidden_act") && j["hidden_act"] != "silu") {
    fail("{}: unsupported hidden_act {} (supported: silu)", source, j["hidden_act"].dump());
  }
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
