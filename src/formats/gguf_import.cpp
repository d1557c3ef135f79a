#include "quant/formats/gguf_import.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/formats/ggml_quants.h"
#include "quant/formats/gguf_export.h"
#include "quant/io/gguf.h"

namespace quant::formats {

namespace {

using json = nlohmann::json;
using gguf::File;
using gguf::Value;
using gguf::ValueType;

const std::set<std::string> kArchs = {"llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "qwen2moe", "qwen3moe"};

class Meta {
 public:
  Meta(const File& f, std::string arch) : f_(f), arch_(std::move(arch)) {}
  // `{arch}.key` as an integer; `fallback` < 0: required.
  std::int64_t integer(const std::string& key, std::int64_t fallback = -1) const {
    const Value* v = f_.find(arch_ + "." + key);
    if (!v) {
      if (fallback < 0) fail("{}: metadata key '{}.{}' is missing", f_.path().string(), arch_, key);
      return fallback;
    }
    switch (v->type) {
      case ValueType::UINT8: case ValueType::UINT16: case ValueType::UINT32: case ValueType::UINT64:
        if (v->u > (std::uint64_t{1} << 40)) break;
        return static_cast<std::int64_t>(v->u);
      case ValueType::INT8: case ValueType::INT16: case ValueType::INT32: case ValueType::INT64:
        if (v->i < 0 || v->i > (std::int64_t{1} << 40)) break;
        return v->i;
      default:
        break;
    }
    fail("{}: metadata key '{}.{}' must be a non-negative integer (per-layer arrays are not supported), found {}", f_.path().string(),
         arch_, key, v->to_string());
  }
  double number(const std::string& key, double fallback) const {
    const Value* v = f_.find(arch_ + "." + key);
    if (!v) return fallback;
    if (v->type == ValueType::FLOAT32 || v->type == ValueType::FLOAT64) return v->f;
    if (v->type == ValueType::UINT32 || v->type == ValueType::UINT64) return static_cast<double>(v->u);
    if (v->type == ValueType::INT32 || v->type == ValueType::INT64) return static_cast<double>(v->i);
    fail("{}: metadata key '{}.{}' must be a number, found {}", f_.path().string(), arch_, key, v->to_string());
  }
  std::string string(const std::string& key) const {
    const Value* v = f_.find(arch_ + "." + key);
    return v && v->type == ValueType::STRING ? v->s : std::string();
  }

 private:
  const File& f_;
  std::string arch_;
};

std::int64_t token_id(const File& f, const char* key) {
  const Value* v = f.find(key);
  if (!v) return -1;
  if (v->type == ValueType::UINT32 || v->type == ValueType::UINT64) return static_cast<std::int64_t>(v->u);
  if (v->type == ValueType::INT32 || v->type == ValueType::INT64) return v->i;
  return -1;
}

// The HF config.json llama.cpp's converter read to write this file's metadata
// (convert_hf_to_gguf.py set_gguf_parameters, run backwards).
json hf_config(const File& f, const std::string& arch) {
  const Meta m(f, arch);
  const std::string where = f.path().string();
  const std::int64_t experts = m.integer("expert_count", 0);
  static const std::map<std::string, std::pair<const char*, const char*>> kTypes = {
      {"llama", {"llama", "LlamaForCausalLM"}},          {"qwen2", {"qwen2", "Qwen2ForCausalLM"}},
      {"qwen3", {"qwen3", "Qwen3ForCausalLM"}},          {"gemma2", {"gemma2", "Gemma2ForCausalLM"}},
      {"gemma3", {"gemma3_text", "Gemma3ForCausalLM"}},  {"phi3", {"phi3", "Phi3ForCausalLM"}},
      {"qwen2moe", {"qwen2_moe", "Qwen2MoeForCausalLM"}}, {"qwen3moe", {"qwen3_moe", "Qwen3MoeForCausalLM"}}};
  auto type = kTypes.at(arch);
  if (arch == "llama" && experts > 0) type = {"mixtral", "MixtralForCausalLM"};  // llama with experts: Mixtral
  json j;
  j["model_type"] = type.first;
  j["architectures"] = json::array({type.second});
  if ((arch == "qwen2moe" || arch == "qwen3moe") && experts <= 0) fail("{}: {}.expert_count is missing", where, arch);
  if (experts > 0 && arch != "llama" && arch != "qwen2moe" && arch != "qwen3moe") {
    fail("{}: {}.expert_count = {}: experts are supported for llama (Mixtral), qwen2moe and qwen3moe", where, arch, experts);
  }
  const std::int64_t hidden = m.integer("embedding_length"), heads = m.integer("attention.head_count");
  if (heads <= 0) fail("{}: {}.attention.head_count must be positive", where, arch);
  j["hidden_size"] = hidden;
  j["intermediate_size"] = m.integer("feed_forward_length");
  if (experts > 0) {
    // As llama.cpp reads them (src/models/{llama,qwen2moe,qwen3moe}.cpp): n_ff_exp defaults to
    // n_ff / n_expert_used, n_ff_shexp to n_ff; qwen3moe renormalizes the top-k weights, qwen2moe
    // does not, llama (Mixtral) always does.
    const std::int64_t used = m.integer("expert_used_count");
    if (used <= 0 || used > experts) fail("{}: {}.expert_used_count = {} with {} experts", where, arch, used, experts);
    j[arch == "llama" ? "num_local_experts" : "num_experts"] = experts;
    j["num_experts_per_tok"] = used;
    if (arch != "llama") {
      j["moe_intermediate_size"] = m.integer("expert_feed_forward_length", j["intermediate_size"].get<std::int64_t>() / used);
      j["norm_topk_prob"] = arch == "qwen3moe";
    }
    if (arch == "qwen2moe") {
      j["shared_expert_intermediate_size"] = m.integer("expert_shared_feed_forward_length", j["intermediate_size"]);
      j["qkv_bias"] = std::any_of(f.tensors.begin(), f.tensors.end(), [](const gguf::TensorInfo& t) { return t.name == "blk.0.attn_q.bias"; });
    }
  }
  j["num_hidden_layers"] = m.integer("block_count");
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = m.integer("attention.head_count_kv", heads);
  const std::int64_t head_dim = m.integer("attention.key_length", hidden / heads);
  if (m.integer("attention.value_length", head_dim) != head_dim) fail("{}: key and value head sizes differ, which quant does not support", where);
  if (const std::int64_t rot = m.integer("rope.dimension_count", head_dim); rot != head_dim) {
    // Phi3MiniModel writes int(partial_rotary_factor · hidden) / heads (Phi-4-mini: 0.75).
    if (arch != "phi3") fail("{}: RoPE over {} of {} head dimensions (partial rotary) is supported for phi3 only", where, rot, head_dim);
    j["partial_rotary_factor"] = static_cast<double>(rot) / static_cast<double>(head_dim);
  }
  j["head_dim"] = head_dim;
  j["max_position_embeddings"] = m.integer("context_length", 2048);
  j["rms_norm_eps"] = m.number("attention.layer_norm_rms_epsilon", 1e-6);
  j["rope_theta"] = m.number("rope.freq_base", 10000.0);  // llama.cpp's default when the key is absent
  j["torch_dtype"] = "float32";
  const Value* tokens = f.find("tokenizer.ggml.tokens");
  if (!tokens || tokens->type != ValueType::ARRAY) fail("{}: no tokenizer.ggml.tokens (quant eval needs the GGUF's vocabulary)", where);
  j["vocab_size"] = static_cast<std::int64_t>(tokens->arr.size());
  j["tie_word_embeddings"] = std::none_of(f.tensors.begin(), f.tensors.end(), [](const gguf::TensorInfo& t) { return t.name == "output.weight"; });
  if (const auto bos = token_id(f, "tokenizer.ggml.bos_token_id"); bos >= 0) j["bos_token_id"] = bos;
  if (const auto eos = token_id(f, "tokenizer.ggml.eos_token_id"); eos >= 0) j["eos_token_id"] = eos;
  const std::string scaling = m.string("rope.scaling.type");
  if (scaling == "linear") {
    j["rope_scaling"] = {{"rope_type", "linear"}, {"factor", m.number("rope.scaling.factor", 1.0)}};
  } else if (scaling == "yarn") {
    // As llama.cpp runs it (llama-context.cpp): the factor, the original context (default the
    // training context), beta 32/1 and the attention factor 0.1·ln(factor) + 1.
    j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", m.number("rope.scaling.factor", 1.0)},
                         {"original_max_position_embeddings", m.integer("rope.scaling.original_context_length", j["max_position_embeddings"])}};
  } else if (!scaling.empty() && scaling != "none") {
    fail("{}: RoPE scaling '{}' is not supported for GGUF input (supported: linear, yarn)", where, scaling);
  }
  if (arch != "phi3" && m.number("rope.scaling.attn_factor", 1.0) != 1.0) {
    fail("{}: {}.rope.scaling.attn_factor {} is not supported for GGUF input", where, arch, m.number("rope.scaling.attn_factor", 1.0));
  }
  if (arch == "gemma2") {
    // llama.cpp's build_gemma2 scales q by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) for the
    // 46-layer 27B; the sliding window is on even layers (Gemma2Config's pattern).
    j["query_pre_attn_scalar"] = j["num_hidden_layers"] == 46 ? hidden / heads : head_dim;
    j["attn_logit_softcapping"] = m.number("attn_logit_softcapping", 50.0);
    j["final_logit_softcapping"] = m.number("final_logit_softcapping", 30.0);
    j["sliding_window"] = m.integer("attention.sliding_window", 4096);
  }
  if (arch == "gemma3") {
    // src/models/gemma3.cpp: the same scale rule (27B: 62 layers), no attention soft-capping,
    // sliding layers by attention.sliding_window_pattern (default 6) when a window is set,
    // local RoPE base rope.freq_base_swa (default 10^4) unscaled.
    j["query_pre_attn_scalar"] = j["num_hidden_layers"] == 62 ? hidden / heads : head_dim;
    j["attn_logit_softcapping"] = nullptr;
    const double cap = m.number("final_logit_softcapping", 0.0);
    j["final_logit_softcapping"] = cap > 0 ? json(cap) : json(nullptr);
    const std::int64_t window = m.integer("attention.sliding_window", 0);
    j["sliding_window"] = window;
    j["sliding_window_pattern"] = window > 0 ? m.integer("attention.sliding_window_pattern", 6) : 1;
    j["rope_local_base_freq"] = m.number("rope.freq_base_swa", 10000.0);
  }
  if (arch == "phi3") {
    if (const auto w = m.integer("attention.sliding_window", 0); w > 0) j["sliding_window"] = w;
    const std::int64_t original = m.integer("rope.scaling.original_context_length", j["max_position_embeddings"]);
    j["original_max_position_embeddings"] = original;
    // Phi3MiniModel's longrope: rope_factors_long/short tensors, rope.scaling.attn_factor.
    std::vector<double> lf, sf;
    for (const auto& t : f.tensors) {
      if (t.name != "rope_factors_long.weight" && t.name != "rope_factors_short.weight") continue;
      auto& out = t.name == "rope_factors_long.weight" ? lf : sf;
      for (float x : gguf::dequantize_tensor(f, t.name)) out.push_back(x);
    }
    if (lf.empty() != sf.empty()) fail("{}: one of rope_factors_long.weight / rope_factors_short.weight is missing", where);
    if (!lf.empty()) {
      j["rope_scaling"] = {{"type", "longrope"}, {"long_factor", lf}, {"short_factor", sf},
                           {"original_max_position_embeddings", original}, {"attention_factor", m.number("rope.scaling.attn_factor", 1.0)}};
    }
  }
  if (arch == "llama" || arch == "phi3") {
    for (const auto& t : f.tensors) {
      if (t.name.ends_with(".bias")) fail("{}: tensor '{}': linear biases are not supported for GGUF {} input", where, t.name, arch);
    }
  }
  return j;
}

// GGUF tensor names of the layout's HF tensors, with how each is turned back into the HF tensor.
struct Source {
  std::string gguf;
  std::int64_t rope_heads = 0;  // llama's q/k: un-permute rows over this many heads
  float offset = 0;             // subtracted (Gemma norms are stored as 1 + w)
  int block = -1;               // stacked experts (ffn_*_exps): the expert's slice along the last ggml dim
  std::vector<std::int64_t> shape = {};  // the HF shape when it differs from the GGUF's (shared-expert gate: [1, hidden])
};

std::map<std::string, Source> tensor_sources(const ModelConfig& c, const ModelLayout& L, const std::string& arch) {
  std::map<std::string, Source> s;
  const float off = c.norm_offset;
  s[L.embed] = {"token_embd.weight"};
  s[L.final_norm] = {"output_norm.weight", 0, off};
  if (!L.tied) s[L.lm_head.weight_name()] = {"output.weight"};
  for (const auto& layer : L.layers) {
    const std::string b = fmt::format("blk.{}.", layer.index);
    s[layer.attn_norm] = {b + "attn_norm.weight", 0, off};
    s[layer.mlp_norm] = {b + "ffn_norm.weight", 0, off};
    if (!layer.q_norm.empty()) s[layer.q_norm] = {b + "attn_q_norm.weight", 0, off};
    if (!layer.k_norm.empty()) s[layer.k_norm] = {b + "attn_k_norm.weight", 0, off};
    if (!layer.post_attn_norm.empty()) s[layer.post_attn_norm] = {b + "post_attention_norm.weight", 0, off};
    if (!layer.post_mlp_norm.empty()) s[layer.post_mlp_norm] = {b + "post_ffw_norm.weight", 0, off};
    if (layer.moe) {  // gguf_export's names: router, stacked experts, shared expert
      s[layer.router] = {b + "ffn_gate_inp.weight"};
      for (int e = -1; e < layer.n_experts; ++e) {
        if (e < 0 && !layer.has_shared_expert()) continue;
        for (LinearKind k : {LinearKind::gate, LinearKind::up, LinearKind::down}) {
          const LinearDesc& l = layer.expert(e, k);
          s[l.weight_name()] = {gguf::gguf_linear_name(l), 0, 0, e};
        }
      }
      if (layer.has_shared_expert()) s[layer.shared_gate] = {b + "ffn_gate_inp_shexp.weight", 0, 0, -1, {1, c.hidden_size}};
    }
    for (LinearKind k : kAllLinearKinds) {
      if (layer.moe && k >= LinearKind::gate) break;
      const LinearDesc& l = layer.linear(k);
      const std::int64_t heads = arch != "llama" ? 0 : k == LinearKind::q ? c.n_heads : k == LinearKind::k ? c.n_kv_heads : 0;
      s[l.weight_name()] = {gguf::gguf_linear_name(l.storage_desc()), heads};
      if (l.bias) {
        s[l.bias_name()] = {fmt::format("blk.{}.{}.bias", layer.index, k == LinearKind::q ? "attn_q" : k == LinearKind::k ? "attn_k" : "attn_v")};
      }
    }
  }
  return s;
}

}  // namespace

Model open_gguf_model(const fs::path& path) {
  auto file = std::make_shared<const File>(File::open(path));
  const std::string where = path.string();
  const Value* a = file->find("general.architecture");
  if (!a || a->type != ValueType::STRING) fail("{}: no general.architecture", where);
  const std::string arch = a->s;
  if (!kArchs.contains(arch)) {
    fail("{}: GGUF architecture '{}' is not supported for evaluation (supported: llama, qwen2, qwen3, gemma2, gemma3, phi3, qwen2moe, qwen3moe)", where, arch);
  }
  const json config_json = hf_config(*file, arch);
  ModelConfig config = ModelConfig::from_json(config_json, where);
  // Llama 3.1's scaling as the converter stores it: one divisor per RoPE frequency.
  for (const auto& t : file->tensors) {
    if (t.name != "rope_freqs.weight") continue;
    if (config.rope_scaling.type != "none") fail("{}: rope_freqs.weight together with rope.scaling.type '{}'", where, config.rope_scaling.type);
    if (t.ne.size() != 1 || t.ne[0] != config.head_dim / 2) fail("{}: rope_freqs.weight must hold head_dim / 2 = {} factors", where, config.head_dim / 2);
    config.rope_scaling.type = "freq_factors";
    for (float x : gguf::dequantize_tensor(*file, t.name)) {
      if (!(x > 0 && std::isfinite(x))) fail("{}: rope_freqs.weight holds {}, not a positive factor", where, x);
      config.rope_scaling.freq_factors.push_back(x);
    }
  }
  // The layer count against the tensors present, before any per-layer state is built (a
  // block_count edited to 10^9 must not allocate for it).
  std::int64_t present = 0;
  for (const auto& t : file->tensors) {
    if (t.name.rfind("blk.", 0) != 0) continue;
    std::int64_t n = 0;
    std::size_t i = 4;
    for (; i < t.name.size() && std::isdigit(static_cast<unsigned char>(t.name[i])) && n < (std::int64_t{1} << 40); ++i) n = n * 10 + (t.name[i] - '0');
    if (i > 4) present = std::max(present, n + 1);
  }
  if (present != config.n_layers) {
    fail("{}: {}.block_count is {}, but the file holds tensors for {} blocks", where, arch, config.n_layers, present);
  }
  const ModelLayout layout = build_layout(config);
  const std::map<std::string, Source> sources = tensor_sources(config, layout, arch);

  std::vector<TensorStore::Computed> tensors;
  std::set<std::string> used;
  for (const auto& entry : sources) {
    const std::string& hf = entry.first;
    const Source src = entry.second;  // a plain variable: clang 14 cannot capture a structured binding
    const gguf::TensorInfo* t = nullptr;
    for (const auto& info : file->tensors) {
      if (info.name == src.gguf) t = &info;
    }
    if (!t) fail("{}: tensor '{}' is missing (the architecture implies it, for {})", where, src.gguf, hf);
    if (!gguf::type_info(static_cast<std::uint32_t>(t->type))) fail("{}: tensor '{}' has a block type quant cannot read", where, src.gguf);
    used.insert(src.gguf);
    std::vector<std::int64_t> shape(t->ne.rbegin(), t->ne.rend());  // ggml order reversed: HF [rows, cols]
    if (src.block >= 0) {  // one expert of {n_expert, rows, cols}
      if (shape.size() != 3 || src.block >= shape[0]) fail("{}: tensor '{}' is not a stack of {} experts", where, src.gguf, src.block + 1);
      shape.erase(shape.begin());
    }
    if (!src.shape.empty()) shape = src.shape;
    std::int64_t numel = 1;
    for (auto d : shape) numel *= d;
    tensors.push_back({hf, shape, [file, name = src.gguf, src, cols = t->ne[0], numel, where](float* dst) {
                         std::vector<float> y = gguf::dequantize_tensor(*file, name);
                         if (src.rope_heads > 0) y = gguf::unpermute_rope_rows(y, src.rope_heads, cols);
                         const std::size_t from = src.block >= 0 ? static_cast<std::size_t>(src.block * numel) : 0;
                         if (from + static_cast<std::size_t>(numel) > y.size()) fail("{}: tensor '{}' is smaller than its shape", where, name);
                         for (std::size_t i = 0; i < static_cast<std::size_t>(numel); ++i) {
                           const float x = y[from + i] - src.offset;
                           if (!std::isfinite(x)) fail("{}: tensor '{}' holds a non-finite value", where, name);
                           dst[i] = x;
                         }
                       }});
  }
  for (const char* extra : {"rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"}) used.insert(extra);
  for (const auto& t : file->tensors) {
    if (!used.contains(t.name)) log::warn("{}: tensor '{}' is not used by the {} architecture", where, t.name, arch);
  }
  log::info("{}: GGUF {} ({} layers, {} tensors), dequantized layer by layer", where, arch, config.n_layers, file->tensors.size());
  return Model::from_store(path, std::move(config), TensorStore::computed(path, std::move(tensors)), nullptr, path);
}

}  // namespace quant::formats
