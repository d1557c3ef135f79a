#include "quant/model/model.h"

#include <algorithm>
#include <cctype>
#include <set>

#include "quant/core/error.h"

namespace quant {

std::string_view linear_kind_name(LinearKind kind) {
  switch (kind) {
    case LinearKind::q: return "q_proj";
    case LinearKind::k: return "k_proj";
    case LinearKind::v: return "v_proj";
    case LinearKind::o: return "o_proj";
    case LinearKind::gate: return "gate_proj";
    case LinearKind::up: return "up_proj";
    case LinearKind::down: return "down_proj";
  }
  return "?";
}

std::string fused_prefix(const LinearDesc& l) {
  if (l.fused()) return l.storage;
  if (l.layer < 0) return l.prefix;
  // Routed experts: vLLM's FusedMoE module of the layer ("...mlp.experts"), which stacks every
  // expert's gate/up as w13 and down as w2 under one quantization config.
  if (l.expert >= 0) return l.prefix.substr(0, l.prefix.rfind(".experts.") + std::string(".experts").size());
  const std::string block = l.prefix.substr(0, l.prefix.rfind('.') + 1);
  switch (l.kind) {
    case LinearKind::q: case LinearKind::k: case LinearKind::v: return block + "qkv_proj";
    case LinearKind::gate: case LinearKind::up: return block + "gate_up_proj";
    default: return l.prefix;
  }
}

std::vector<const LinearDesc*> storage_siblings(const LayerDesc& layer, const LinearDesc& l) {
  if (!l.fused()) return {&l};
  std::vector<const LinearDesc*> out;
  for (const auto& s : layer.linears) {
    if (s.storage == l.storage) out.push_back(&s);
  }
  std::sort(out.begin(), out.end(), [](const LinearDesc* a, const LinearDesc* b) { return a->row_offset < b->row_offset; });
  return out;
}

std::vector<const LinearDesc*> fused_siblings(const LayerDesc& layer, const LinearDesc& l) {
  const auto set_of = [](LinearKind k) { return k <= LinearKind::v ? 0 : k == LinearKind::gate || k == LinearKind::up ? 1 : -1; };
  if (set_of(l.kind) < 0) return {&l};
  std::vector<const LinearDesc*> out;
  for (const auto& s : layer.linears) {
    if (set_of(s.kind) == set_of(l.kind) && s.expert == l.expert && s.shared_expert == l.shared_expert) out.push_back(&s);
  }
  return out;
}

std::string block_relative_name(const LinearDesc& l) {
  if (l.layer < 0) return l.prefix;
  const std::string marker = fmt::format("layers.{}.", l.layer);
  const auto at = l.prefix.find(marker);
  return at == std::string::npos ? l.prefix : l.prefix.substr(at + marker.size());
}

const LinearDesc& LayerDesc::linear(LinearKind k) const {
  const auto i = static_cast<std::size_t>(k);
  if (moe && k >= LinearKind::gate) fail<Error>("layer {} is a sparse (MoE) layer: its {} belongs to an expert", index, linear_kind_name(k));
  return linears.at(i);
}

const LinearDesc& LayerDesc::expert(int e, LinearKind k) const {
  if (!moe || k < LinearKind::gate || e < -1 || e >= n_experts || (e == -1 && !has_shared_expert())) {
    fail<Error>("layer {}: no expert {} {}", index, e, linear_kind_name(k));
  }
  const int slot = (e < 0 ? n_experts : e) * 3 + static_cast<int>(k) - static_cast<int>(LinearKind::gate);
  return linears.at(static_cast<std::size_t>(4 + slot));
}

std::vector<std::pair<std::string, std::vector<std::int64_t>>> LayerDesc::moe_tensors(std::int64_t hidden) const {
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> out;
  if (!moe) return out;
  out.push_back({router, {n_experts, hidden}});
  if (has_shared_expert()) out.push_back({shared_gate, {1, hidden}});
  return out;
}

ModelLayout build_layout(const ModelConfig& c) {
  ModelLayout L;
  L.tied = c.tie_word_embeddings;
  L.lm_head = {"lm_head", LinearKind::o, -1, c.vocab_size, c.hidden_size, false};
  const std::int64_t q_out = c.n_heads * c.head_dim;
  const std::int64_t kv_out = c.n_kv_heads * c.head_dim;
  for (int i = 0; i < c.n_layers; ++i) {
    LayerDesc d;
    d.index = i;
    const std::string p = fmt::format("model.layers.{}.", i);
    auto lin = [&](LinearKind k, const char* block, std::int64_t out, std::int64_t in, bool bias) {
      d.linears.push_back(LinearDesc{p + block + std::string(linear_kind_name(k)), k, i, out, in, bias});
    };
    lin(LinearKind::q, "self_attn.", q_out, c.hidden_size, c.qkv_bias);
    lin(LinearKind::k, "self_attn.", kv_out, c.hidden_size, c.qkv_bias);
    lin(LinearKind::v, "self_attn.", kv_out, c.hidden_size, c.qkv_bias);
    lin(LinearKind::o, "self_attn.", c.hidden_size, q_out, c.o_bias);
    if (c.is_moe_layer(i)) {
      // MixtralSparseMoeBlock: block_sparse_moe.{gate, experts.E.w1/w3/w2}; Qwen2MoeSparseMoeBlock/
      // Qwen3MoeSparseMoeBlock: mlp.{gate, experts.E.*_proj, shared_expert.*_proj, shared_expert_gate}.
      const MoeConfig& m = c.moe;
      d.moe = true;
      d.n_experts = static_cast<int>(m.n_experts);
      d.router = p + m.block + "gate.weight";
      auto expert = [&](const std::string& base, int e, std::int64_t ffn, const std::array<std::string, 3>& names) {
        for (int j = 0; j < 3; ++j) {
          const auto k = static_cast<LinearKind>(static_cast<int>(LinearKind::gate) + j);
          LinearDesc l{base + names[static_cast<std::size_t>(j)], k, i, k == LinearKind::down ? c.hidden_size : ffn,
                       k == LinearKind::down ? ffn : c.hidden_size, false};
          l.expert = e;
          l.shared_expert = e < 0;
          d.linears.push_back(std::move(l));
        }
      };
      for (int e = 0; e < d.n_experts; ++e) expert(fmt::format("{}{}experts.{}.", p, m.block, e), e, m.expert_ffn, m.expert_names);
      if (m.shared_ffn > 0) {
        expert(p + m.block + "shared_expert.", -1, m.shared_ffn, {"gate_proj", "up_proj", "down_proj"});
        d.shared_gate = p + m.block + "shared_expert_gate.weight";
      }
    } else {
      lin(LinearKind::gate, "mlp.", c.intermediate_size, c.hidden_size, c.mlp_bias);
      lin(LinearKind::up, "mlp.", c.intermediate_size, c.hidden_size, c.mlp_bias);
      lin(LinearKind::down, "mlp.", c.hidden_size, c.intermediate_size, c.mlp_bias);
    }
    if (c.fused_qkv_gate_up) {  // Phi3Attention.qkv_proj = [q; k; v], Phi3MLP.gate_up_proj = [gate; up]
      auto fuse = [&](LinearKind k, const std::string& storage, std::int64_t offset, std::int64_t rows) {
        LinearDesc& d2 = d.linears[static_cast<int>(k)];
        d2.storage = p + storage;
        d2.row_offset = offset;
        d2.storage_rows = rows;
      };
      fuse(LinearKind::q, "self_attn.qkv_proj", 0, q_out + 2 * kv_out);
      fuse(LinearKind::k, "self_attn.qkv_proj", q_out, q_out + 2 * kv_out);
      fuse(LinearKind::v, "self_attn.qkv_proj", q_out + kv_out, q_out + 2 * kv_out);
      fuse(LinearKind::gate, "mlp.gate_up_proj", 0, 2 * c.intermediate_size);
      fuse(LinearKind::up, "mlp.gate_up_proj", c.intermediate_size, 2 * c.intermediate_size);
    }
    d.attn_norm = p + "input_layernorm.weight";
    if (c.sandwich_norms) {  // Gemma2DecoderLayer: four norms, the MLP's is pre_feedforward_layernorm
      d.post_attn_norm = p + "post_attention_layernorm.weight";
      d.mlp_norm = p + "pre_feedforward_layernorm.weight";
      d.post_mlp_norm = p + "post_feedforward_layernorm.weight";
    } else {
      d.mlp_norm = p + "post_attention_layernorm.weight";
    }
    if (c.qk_norm) {
      d.q_norm = p + "self_attn.q_norm.weight";
      d.k_norm = p + "self_attn.k_norm.weight";
    }
    L.layers.push_back(std::move(d));
  }
  return L;
}

std::vector<std::pair<std::string, std::int64_t>> LayerDesc::norms(std::int64_t hidden, std::int64_t head_dim) const {
  std::vector<std::pair<std::string, std::int64_t>> out = {{attn_norm, hidden}};
  if (!q_norm.empty()) out.emplace_back(q_norm, head_dim);
  if (!k_norm.empty()) out.emplace_back(k_norm, head_dim);
  if (!post_attn_norm.empty()) out.emplace_back(post_attn_norm, hidden);
  out.emplace_back(mlp_norm, hidden);
  if (!post_mlp_norm.empty()) out.emplace_back(post_mlp_norm, hidden);
  return out;
}

namespace {

// `fp8`: an F8_E4M3 or I8 (compressed-tensors int-quantized) linear weight is accepted when its
// scale is there (load_linear applies it).
void expect_shape(const TensorStore& store, const std::string& name,
                  std::vector<std::int64_t> shape, const fs::path& dir, bool fp8 = false) {
  const TensorInfo* t = store.find(name);
  if (!t) fail("{}: tensor '{}' is missing (the config implies it)", dir.string(), name);
  if (t->shape != shape) {
    fail("{}: tensor '{}' has shape {} but config.json implies {}", store.file_of(name).string(),
         name, fmt::join(t->shape, "x"), fmt::join(shape, "x"));
  }
  if (fp8 && (t->dtype == DType::F8_E4M3 || t->dtype == DType::I8)) {
    const std::string prefix = name.substr(0, name.size() - std::string(".weight").size());
    if (!store.contains(prefix + ".weight_scale") && !store.contains(prefix + ".weight_scale_inv")) {
      fail("{}: tensor '{}' is {} but has no '{}.weight_scale' or '.weight_scale_inv' to dequantize it with",
           store.file_of(name).string(), name, dtype_name(t->dtype), prefix);
    }
    if (store.contains(prefix + ".weight_zero_point")) {
      fail("{}: tensor '{}' is {} with a '{}.weight_zero_point': asymmetric int-quantized weights are not supported (vLLM's W8A8 needs symmetric ones)",
           store.file_of(name).string(), name, dtype_name(t->dtype), prefix);
    }
    return;
  }
  if (!is_float(t->dtype)) {
    fail("{}: tensor '{}' has dtype {}; weights must be F32, F16, BF16 or F64",
         store.file_of(name).string(), name, dtype_name(t->dtype));
  }
}

}  // namespace

Model Model::open(const fs::path& dir, PackedLinearReader packed_reader) {
  return from_store(dir, ModelConfig::load(dir), TensorStore::open(dir), packed_reader, dir / "config.json");
}

Model Model::from_store(const fs::path& dir, ModelConfig config, TensorStore store, PackedLinearReader packed_reader,
                        const fs::path& config_source) {
  Model m;
  m.dir_ = dir;
  m.packed_reader_ = packed_reader;
  m.config_ = std::move(config);
  m.store_ = std::move(store);
  // The layer count against the tensors that exist, before any per-layer state is built (a
  // config edited to 10^9 layers must not allocate for them).
  std::int64_t present = 0;
  for (const auto& name : m.store_.names()) {
    static const std::string prefix = "model.layers.";
    if (name.rfind(prefix, 0) != 0) continue;
    std::int64_t n = 0;
    std::size_t i = prefix.size();
    for (; i < name.size() && std::isdigit(static_cast<unsigned char>(name[i])) && n < (std::int64_t{1} << 40); ++i) n = n * 10 + (name[i] - '0');
    if (i > prefix.size()) present = std::max(present, n + 1);
  }
  if (m.config_.n_layers != present) {
    fail("{}: the config says num_hidden_layers = {}, but the checkpoint holds tensors for {} layers ({})", config_source.string(),
         m.config_.n_layers, present,
         m.config_.n_layers > present ? fmt::format("model.layers.{}.* is missing", present)
                                      : fmt::format("model.layers.{}.* is not in the config", m.config_.n_layers));
  }
  m.layout_ = build_layout(m.config_);
  const auto& c = m.config_;
  expect_shape(m.store_, m.layout_.embed, {c.vocab_size, c.hidden_size}, dir);
  expect_shape(m.store_, m.layout_.final_norm, {c.hidden_size}, dir);
  auto check_linear = [&](const LinearDesc& l) {
    if (m.storage(l) == LinearStorage::dense) {
      expect_shape(m.store_, l.weight_name(), {l.fused() ? l.storage_rows : l.out, l.in}, dir, true);
    }
    if (l.bias) expect_shape(m.store_, l.bias_name(), {l.out}, dir);
  };
  if (!m.layout_.tied) {
    if (!m.store_.contains("lm_head.weight") && !m.store_.contains("lm_head.qweight") && !m.store_.contains("lm_head.weight_packed")) {
      fail("{}: tensor 'lm_head.weight' is missing and tie_word_embeddings is false", dir.string());
    }
    check_linear(m.layout_.lm_head);
  }
  for (const auto& layer : m.layout_.layers) {
    for (const auto& [name, n] : layer.norms(c.hidden_size, c.head_dim)) expect_shape(m.store_, name, {n}, dir);
    for (const auto& [name, shape] : layer.moe_tensors(c.hidden_size)) expect_shape(m.store_, name, shape, dir);
    for (const auto& l : layer.linears) check_linear(l);
  }
  return m;
}

LinearStorage Model::storage(const LinearDesc& l) const {
  if (store_.contains(l.weight_name())) return LinearStorage::dense;
  // gptq/awq/lut store ".qweight", compressed-tensors ".weight_packed" (src/formats/ decodes them).
  if (store_.contains(l.tensor_prefix() + ".qweight") || store_.contains(l.tensor_prefix() + ".weight_packed")) return LinearStorage::packed;
  fail("{}: tensor '{}' is missing (the config implies it)", dir_.string(), l.weight_name());
}

std::int64_t Model::n_params() const {
  const auto& c = config_;
  std::int64_t n = c.vocab_size * c.hidden_size + c.hidden_size;
  for (const auto& layer : layout_.layers) {
    for (const auto& norm : layer.norms(c.hidden_size, c.head_dim)) n += norm.second;
    for (const auto& t : layer.moe_tensors(c.hidden_size)) n += t.second[0] * t.second[1];
  }
  for (const LinearDesc* l : linears()) n += l->out * l->in + (l->bias ? l->out : 0);
  return n;
}

std::vector<const LinearDesc*> Model::linears() const {
  std::vector<const LinearDesc*> out;
  for (const auto& layer : layout_.layers) {
    for (const auto& l : layer.linears) out.push_back(&l);
  }
  if (!layout_.tied) out.push_back(&layout_.lm_head);
  return out;
}

std::vector<std::string> Model::unused_tensors(const std::vector<std::string>& linear_suffixes) const {
  std::set<std::string> used = {layout_.embed, layout_.final_norm};
  for (const LinearDesc* l : linears()) {
    for (const auto& suffix : linear_suffixes) used.insert(l->tensor_prefix() + suffix);
  }
  for (const auto& layer : layout_.layers) {
    for (const auto& norm : layer.norms(config_.hidden_size, config_.head_dim)) used.insert(norm.first);
    for (const auto& t : layer.moe_tensors(config_.hidden_size)) used.insert(t.first);
  }
  std::vector<std::string> out;
  for (const auto& name : store_.names()) {
    if (!used.count(name)) out.push_back(name);
  }
  return out;
}

}  // namespace quant
