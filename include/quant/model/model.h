// A Llama-family checkpoint directory: config, tensors and the typed layout that maps
// HuggingFace tensor names to decoder layers and their linear layers.
#pragma once

#include <array>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "quant/core/quantizer.h"
#include "quant/core/tensor.h"
#include "quant/model/config.h"
#include "quant/io/safetensors.h"

namespace quant {

enum class LinearKind { q, k, v, o, gate, up, down };
inline constexpr std::array<LinearKind, 7> kAllLinearKinds = {
    LinearKind::q, LinearKind::k, LinearKind::v, LinearKind::o,
    LinearKind::gate, LinearKind::up, LinearKind::down};
std::string_view linear_kind_name(LinearKind kind);  // "q_proj", ...

struct LinearDesc {
  std::string prefix;  // e.g. "model.layers.3.self_attn.q_proj"
  LinearKind kind = LinearKind::q;
  int layer = -1;      // -1 for lm_head
  std::int64_t out = 0;
  std::int64_t in = 0;
  bool bias = false;
  // Stored fused (Phi-3's qkv_proj, gate_up_proj): the checkpoint tensor's prefix, this
  // linear's first row in it, and its row count. Empty `storage`: stored on its own.
  std::string storage;
  std::int64_t row_offset = 0;
  std::int64_t storage_rows = 0;
  // MoE layers: the routed expert this linear belongs to (-1: none), or the shared expert.
  int expert = -1;
  bool shared_expert = false;
  bool in_expert() const { return expert >= 0 || shared_expert; }
  bool fused() const { return !storage.empty(); }
  const std::string& tensor_prefix() const { return fused() ? storage : prefix; }
  std::string weight_name() const { return tensor_prefix() + ".weight"; }
  std::string bias_name() const { return tensor_prefix() + ".bias"; }
  // The whole stored tensor as one linear (itself when not fused).
  LinearDesc storage_desc() const {
    if (!fused()) return *this;
    LinearDesc d;
    d.prefix = storage;
    d.kind = kind;
    d.layer = layer;
    d.out = storage_rows;
    d.in = in;
    d.bias = bias;
    return d;
  }
};

struct LayerDesc {
  int index = 0;
  // q, k, v, o, then the MLP: gate, up, down of a dense layer (kAllLinearKinds order), or of a
  // sparse (MoE) layer each routed expert's gate, up, down in expert order, then the shared
  // expert's.
  std::vector<LinearDesc> linears;
  bool moe = false;
  int n_experts = 0;
  std::string router;       // the sparse block's router (gate) weight [n_experts, hidden]
  std::string shared_gate;  // qwen2_moe: shared_expert_gate.weight [1, hidden]; empty otherwise
  std::string attn_norm;              // input_layernorm.weight
  std::string mlp_norm;               // post_attention_layernorm.weight (Gemma: pre_feedforward_layernorm)
  // Present only in the families that have them (empty otherwise):
  std::string q_norm, k_norm;         // self_attn.{q,k}_norm.weight [head_dim] (qwen3, gemma3)
  std::string post_attn_norm;         // Gemma: post_attention_layernorm.weight, on the attention output
  std::string post_mlp_norm;          // Gemma: post_feedforward_layernorm.weight, on the MLP output
  // Every norm tensor of the layer with its length, in order.
  std::vector<std::pair<std::string, std::int64_t>> norms(std::int64_t hidden, std::int64_t head_dim) const;
  // An attention linear, or an MLP linear of a dense layer (a sparse layer's: expert()).
  const LinearDesc& linear(LinearKind k) const;
  // Expert e's gate, up or down (e = -1: the shared expert).
  const LinearDesc& expert(int e, LinearKind k) const;
  bool has_shared_expert() const { return !shared_gate.empty(); }
  // Every float tensor of the sparse block that is not a linear (router, shared-expert gate)
  // with its shape; empty for a dense layer.
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> moe_tensors(std::int64_t hidden) const;
};

struct ModelLayout {
  std::string embed = "model.embed_tokens.weight";
  std::string final_norm = "model.norm.weight";
  LinearDesc lm_head;  // prefix "lm_head"; with tied embeddings it reads embed
  bool tied = false;
  std::vector<LayerDesc> layers;
};

ModelLayout build_layout(const ModelConfig& config);

// The layer loaders fuse this linear into (vLLM's packed_modules_mapping for the Llama family:
// q/k/v → self_attn.qkv_proj, gate/up → mlp.gate_up_proj), e.g.
// "model.layers.3.self_attn.qkv_proj"; other linears: their own prefix.
std::string fused_prefix(const LinearDesc& linear);
// The linears of `layer` stored in one checkpoint tensor with `linear` (itself included), in
// row order; just `linear` when it is stored alone.
std::vector<const LinearDesc*> storage_siblings(const LayerDesc& layer, const LinearDesc& linear);
// The linears an inference engine computes as one weight with `linear` (itself included), in
// layer order: q/k/v (vLLM's qkv_proj), gate/up of the block or of one expert (gate_up_proj, an
// expert's w13 rows); just `linear` otherwise. They share per-tensor scales (vLLM keeps the
// largest of a fused layer's input scales and requantizes its weights to the largest weight scale).
std::vector<const LinearDesc*> fused_siblings(const LayerDesc& layer, const LinearDesc& linear);
// The linear's name inside its decoder block ("self_attn.q_proj"), or its prefix for lm_head.
std::string block_relative_name(const LinearDesc& linear);

// How a linear's weight is stored in a checkpoint.
enum class LinearStorage { dense, packed };

class Model;
// Reads a linear stored packed (quantized) as float [out, in]. The formats layer provides one
// (formats::decode_packed_linear); the model layer knows no format.
using PackedLinearReader = Mat (*)(const Model& model, const LinearDesc& linear);
// The activation quantization a checkpoint declares for a linear (compressed-tensors
// input_activations, and a static scheme's input_scale), which the forward pass then simulates;
// from the formats layer too.
using ActQuantReader = ActInput (*)(const Model& model, const LinearDesc& linear);

class Model {
 public:
  // Opens and validates a model directory: every tensor the config implies exists with the
  // right shape (quantized linears are checked by their format when loaded). Packed linears
  // load through `packed_reader` (formats::open_model passes the codecs' reader).
  static Model open(const fs::path& dir, PackedLinearReader packed_reader = nullptr);
  // The same validation over a config and tensors from elsewhere (a GGUF file read as an HF
  // checkpoint: formats::open_gguf_model); `config_source` names the config in errors.
  static Model from_store(const fs::path& dir, ModelConfig config, TensorStore store, PackedLinearReader packed_reader,
                          const fs::path& config_source);

  const fs::path& dir() const { return dir_; }
  const ModelConfig& config() const { return config_; }
  const TensorStore& store() const { return store_; }
  const ModelLayout& layout() const { return layout_; }
  LinearStorage storage(const LinearDesc& linear) const;
  // Logical parameter count (a packed linear counts out × in).
  std::int64_t n_params() const;
  // Tensors in the checkpoint that the layout does not use (e.g. rotary inv_freq buffers), given
  // every suffix a linear's tensors can have (formats::all_linear_suffixes()).
  std::vector<std::string> unused_tensors(const std::vector<std::string>& linear_suffixes) const;
  // Every linear the layout has, in order: each decoder layer's (kAllLinearKinds order), then
  // lm_head when it is not tied to the embedding.
  std::vector<const LinearDesc*> linears() const;
  PackedLinearReader packed_reader() const { return packed_reader_; }
  void set_act_quant_reader(ActQuantReader reader) { act_reader_ = reader; }
  // ActQuant::none unless a reader is attached and the checkpoint declares one for `linear`.
  ActInput act_quant(const LinearDesc& linear) const { return act_reader_ ? act_reader_(*this, linear) : ActInput{}; }

 private:
  fs::path dir_;
  ModelConfig config_;
  TensorStore store_;
  ModelLayout layout_;
  PackedLinearReader packed_reader_ = nullptr;
  ActQuantReader act_reader_ = nullptr;
};

}  // namespace quant
