// The Llama-family forward pass on CPU in float32 (Eigen), prompt-processing style: a whole
// window of tokens at once, as matrix products. It runs layer by layer so that quantizers can
// capture the inputs of each linear layer of one decoder layer at a time.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <vector>

#include "quant/model/model.h"
#include "quant/model/weights.h"
#include "quant/core/tensor.h"

namespace quant {

// One SwiGLU expert of a sparse (MoE) layer: down(silu(gate x) ⊙ up x).
struct ExpertWeights {
  Mat gate, up, down;  // [ffn, hidden], [ffn, hidden], [hidden, ffn]
  Mat& linear(LinearKind k) { return k == LinearKind::gate ? gate : k == LinearKind::up ? up : down; }
};

// Float weights of one decoder layer.
struct LayerWeights {
  std::array<Mat, 7> w;  // [out, in], indexed by LinearKind
  // A linear held as stored instead (load_layer_stored: F16/BF16, read in place by the forward
  // pass); its slot of `w` is then empty.
  std::array<RawMatrix, 7> raw;
  std::array<Vec, 7> b;  // bias, empty when absent
  // Activation quantization each linear's kernel applies to its inputs (W8A8 checkpoints); a
  // static scale is the largest of the linear's fused siblings' (q/k/v, gate/up), as vLLM's
  // fused kernel uses (process_weights_after_loading: input_scale.max()).
  std::array<ActInput, 7> act{};
  Vec attn_norm;
  Vec mlp_norm;
  Vec q_norm, k_norm;        // [head_dim], when the family has them
  Vec post_attn_norm, post_mlp_norm;  // Gemma's norms on the block outputs
  int index = 0;             // the decoder layer (selects sliding-window attention and its RoPE)
  // Sparse (MoE) layers: the router [n_experts, hidden], the experts, and (qwen2_moe) the shared
  // expert with its sigmoid gate [1, hidden]; the MLP slots of `w` stay empty.
  Mat router;
  std::vector<ExpertWeights> experts;
  ExpertWeights shared;
  Mat shared_gate;
  bool moe() const { return router.size() > 0; }
  Mat& linear(LinearKind k) { return w[static_cast<int>(k)]; }
  const Mat& linear(LinearKind k) const { return w[static_cast<int>(k)]; }
  // The weight and bias of any linear of the layer, experts' included (their bias is empty).
  Mat& weight(const LinearDesc& d);
  const Mat& weight(const LinearDesc& d) const { return const_cast<LayerWeights*>(this)->weight(d); }
  const Vec& bias(const LinearDesc& d) const;
  std::size_t bytes() const;
};

// `experts` false: a sparse layer's routed and shared experts stay unloaded (empty matrices, the
// router and shared gate loaded), for a caller that streams them one at a time.
LayerWeights load_layer(const Model& model, int layer, bool experts = true);
// The same, reusing the dense linears' storage of `recycled` (a layer no longer needed), which is
// left empty.
LayerWeights load_layer(const Model& model, int layer, bool experts, LayerWeights&& recycled);

// For forward passes only (evaluation): the dense F16/BF16 linears outside experts and fused
// tensors are held as stored (LayerWeights::raw, half the memory of float, nothing converted);
// `recycled` (may be null) lends its buffers as load_layer's does.
LayerWeights load_layer_stored(const Model& model, int layer, LayerWeights* recycled);

// Embedding, final norm and output head.
struct HeadWeights {
  Mat embed;    // [vocab, hidden]
  float embed_scale = 1.0f;  // the family's embedding multiplier (config.embed_scale)
  Vec final_norm;
  Mat lm_head;  // [vocab, hidden]; empty when tied to embed
  // load_head(…, true): the embedding and the head held as stored instead (F16/BF16), their Mats
  // empty; embed_tokens and final_logits read either form.
  RawMatrix embed_raw, lm_head_raw;
  const Mat& head() const { return lm_head.size() ? lm_head : embed; }
  std::int64_t vocab() const { return embed_raw.empty() ? embed.rows() : embed_raw.rows; }
  std::int64_t hidden() const { return embed_raw.empty() ? embed.cols() : embed_raw.cols; }
};
// `stored`: keep F16/BF16 embedding and head as stored (forward passes only).
HeadWeights load_head(const Model& model, bool stored = false);

// Where linear inputs can be observed. Linears sharing an input share a point:
// attn_in -> q,k,v; o_in -> o; mlp_in -> gate,up; down_in -> down.
enum class CapturePoint { attn_in, o_in, mlp_in, down_in };
CapturePoint capture_point(LinearKind kind);

// Called with the input activations x [tokens, in] of a capture point.
using LinearInputHook = std::function<void(CapturePoint point, const Mat& x)>;

// cos/sin tables for rotary embeddings, [positions, head_dim/2], HF rotate_half convention,
// with rope_scaling (linear, llama3) applied to the inverse frequencies. Gemma 3's sliding
// layers have their own base (rope_local_base_freq) and no scaling: cos_local/sin_local.
struct RopeTable {
  Mat cos;
  Mat sin;
  Mat cos_local, sin_local;  // empty unless config.rope_local_theta > 0
  Eigen::Index positions() const { return cos.rows(); }
};
RopeTable build_rope(const ModelConfig& config, std::int64_t n_positions);

// y = x Wᵀ (+ b) by gemm_xwt (quant/core/gemm.h): each output one ordered fma chain, so results
// are bit-identical for any thread count and on every CPU kernel.
void linear_forward(const Mat& x, const Mat& w, const Vec& b, Mat& y);
// The same for a weight held as stored (gemm_xwt_stored: bit for bit the float weight's result).
void linear_forward(const Mat& x, const RawMatrix& w, const Vec& b, Mat& y);

// RMSNorm with the family's convention: weight·x̂ (Llama, Qwen) or (1 + weight)·x̂ (Gemma).
void apply_norm(const ModelConfig& config, const Mat& x, const Vec& weight, Mat& out);

// Runs one decoder layer in place on the hidden states h [tokens, hidden] of one sequence at
// positions 0..tokens-1. `hook`, when set, sees each capture point's input.
void decoder_layer_forward(const ModelConfig& config, const LayerWeights& layer,
                           const RopeTable& rope, Mat& h, const LinearInputHook* hook = nullptr);

// The stages of decoder_layer_forward, for calibration that runs a layer piece by piece:
// attention output before o_proj for the normed input x; SwiGLU activation (down_proj's
// input) for the normed x; h += x Wᵀ (+ b) of o_proj or down_proj, through the family's
// post-block norm where it has one (Gemma).
Mat attention_block(const ModelConfig& config, const LayerWeights& layer, const RopeTable& rope, const Mat& x);
Mat mlp_activation(const ModelConfig& config, const LayerWeights& layer, const Mat& x);
void add_block_output(const ModelConfig& config, const Mat& x, const LayerWeights& layer, LinearKind kind, Mat& h);

// The routing of a sparse layer for the normed input x [T, hidden]: per expert, the rows of x
// it receives and their weights (in row order), as transformers' sparse MoE blocks compute it —
// softmax of the router logits in float32, the top_k experts, renormalized when
// norm_topk_prob.
struct Routing {
  std::vector<std::vector<Eigen::Index>> rows;  // [expert] → token rows
  std::vector<std::vector<float>> weights;      // [expert] → routing weight of each row
};
Routing route_tokens(const ModelConfig& config, const LayerWeights& layer, const Mat& x);
// Rows `rows` of x.
Mat gather_rows(const Mat& x, const std::vector<Eigen::Index>& rows);
// An expert's SwiGLU activation (its down_proj's input) for x.
Mat expert_activation(const ExpertWeights& e, const Mat& x);
// The sparse block's output for the normed input x: Σ routed experts' outputs × weights, plus
// the shared expert's × sigmoid(shared gate) (qwen2_moe).
Mat moe_block(const ModelConfig& config, const LayerWeights& layer, const Mat& x);

// Runs a layer over several sequences; parallel across sequences (no hooks here).
void decoder_layer_forward_batch(const ModelConfig& config, const LayerWeights& layer,
                                 const RopeTable& rope, std::vector<Mat>& hs);

// Embedding lookup times head.embed_scale: [tokens, hidden]. Token ids are checked against the
// vocabulary.
Mat embed_tokens(const HeadWeights& head, std::span<const std::int32_t> tokens);

// Final RMSNorm + output head (+ the family's final soft-capping): logits [tokens, vocab].
Mat final_logits(const ModelConfig& config, const HeadWeights& head, const Mat& h);

// RMSNorm of each row: x / sqrt(mean(x²) + eps) * (offset + weight).
void rms_norm(const Mat& x, const Vec& weight, double eps, Mat& out, float offset = 0.0f);

// The decoder layers for repeated passes over the stack (evaluation), loaded by
// load_layer_stored (F16/BF16 linears as stored). Layers stay resident when all of them fit in
// `budget_bytes` as float32 (small models: no reloading). Otherwise they stream: one layer is
// resident and the next one is read (or dequantized) in the background while the current one
// runs, into the buffers of the one before, wrapping around to layer 0 for the next pass, so
// memory holds two layers instead of the whole model. Reading comes from the page cache after the
// first pass (pread; not counted in the process's RSS).
inline constexpr std::size_t kResidentLayersBudget = std::size_t{256} << 20;
// The float32 bytes of one decoder layer's linears.
std::size_t layer_f32_bytes(const ModelConfig& config);
class LayerCache {
 public:
  explicit LayerCache(const Model& model, std::size_t budget_bytes = kResidentLayersBudget);
  ~LayerCache();
  LayerCache(const LayerCache&) = delete;
  LayerCache& operator=(const LayerCache&) = delete;
  // Valid until the next get().
  const LayerWeights& get(int layer);
  bool streaming() const { return !keep_all_; }

 private:
  const Model& model_;
  bool keep_all_;
  std::vector<std::unique_ptr<LayerWeights>> layers_;  // keep_all_
  std::unique_ptr<LayerWeights> current_;              // streaming
  int current_layer_ = -1;
  std::future<std::unique_ptr<LayerWeights>> next_;
  int next_layer_ = -1;
};

}  // namespace quant
