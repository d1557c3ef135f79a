// AWQ (Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
// Acceleration", arXiv:2306.00978), as AutoAWQ implements it: per-channel scales s that
// protect salient input channels (Q(W·diag(s))·diag(s)⁻¹ x), found by a grid search on the
// inspected block's output error and folded into the preceding op; then a per-group clipping
// search. Runs layer by layer with the previous layers already scaled and quantized.
#pragma once

#include <functional>
#include <vector>

#include "quant/methods/method.h"

namespace quant {

struct AwqOptions {
  int n_grid = 20;          // scale ratios r = 0, 1/n, …, (n−1)/n
  bool duo_scaling = true;  // s = x_mean^r / w_mean^(1−r); false: s = x_mean^r
  bool clip = true;         // clipping search (skipped for q_proj and k_proj, as AutoAWQ)
  int clip_grid = 20;       // shrink steps of 1/clip_grid …
  double clip_max_shrink = 0.5;  // … down to 1 − max_shrink
  // AutoAWQ's export_compatible: apply the scales and clipping but keep the weights in float
  // (a dense checkpoint for another quantizer, e.g. GGUF's k-quants). Needs the dense format.
  bool export_compatible = false;
  // The scale candidates are scored on a fixed subsample of the calibration set (0: all of it):
  // an MLP or linear mapping on every k-th token, about `search_tokens` of them; the attention
  // mapping on evenly spaced whole windows, at least `search_windows` of them and at least
  // `search_tokens` tokens. Mean |x| and the clipping statistics always use every token.
  std::int64_t search_tokens = 512;
  std::int64_t search_windows = 8;
};

// The candidates' scoring sets (AwqOptions): `xs` itself when it is no larger, else a subsample
// in `storage`. search_windows: evenly spaced whole windows; search_tokens: every k-th token of
// the whole set, stacked in chunks of at most 512 rows.
const std::vector<Mat>& search_windows(const std::vector<Mat>& xs, std::int64_t tokens, std::int64_t windows,
                                       std::vector<Mat>& storage);
const std::vector<Mat>& search_tokens(const std::vector<Mat>& xs, std::int64_t tokens, std::vector<Mat>& storage);
// How many tokens search_tokens keeps of `total` with budget `budget`.
std::int64_t scored_tokens(std::int64_t total, std::int64_t budget);

// Per-channel mean |x| over all rows of all matrices.
Vec mean_abs(const std::vector<Mat>& xs);
// Per-input-channel mean over the given weights of |w| / max|w| of its group (AutoAWQ's w_mean).
Vec weight_mean(const std::vector<const Mat*>& ws, std::int64_t group_size);
// The candidate scales for ratio r, normalised by sqrt(max·min).
Vec awq_scales(const Vec& x_mean, const Vec& w_mean, double ratio, bool duo);

// Clipping search for one weight [out, in] with input Hessian H (2/n Σ x xᵀ of its inputs):
// per (row, group) the symmetric clip max|w|·(1 − i/clip_grid), i < clip_grid·max_shrink,
// minimising the group's output error dᵀ H_gg d with d = w − Q(clip(w)). Returns the clipped
// weight.
Mat awq_clip(const Mat& w, const Mat& H, const QuantSpec& spec, const AwqOptions& options);

// The four Llama mappings: which op absorbs 1/s and which linears take s on their inputs.
enum class AwqMapping {
  attn,     // input_layernorm → q, k, v
  v_o,      // v_proj rows → o_proj (only without GQA)
  mlp,      // post_attention_layernorm → gate, up
  up_down,  // up_proj rows → down_proj
};
// Folds s into the layer: the scaled linears' columns × s, the previous op (norm weight, or
// rows and bias of v_proj/up_proj) × 1/s. The float layer computes the same function.
// norm_offset: the family's RMSNorm convention (1 for Gemma's (1 + w)).
void fold_awq_scales(LayerWeights& layer, AwqMapping mapping, const Vec& s, float norm_offset = 0.0f);

struct AwqSearchResult {
  Vec scales;          // the best s (all ones when no candidate beat plain RTN)
  double ratio = -1;   // the winning r; −1 when s = 1 won
  double loss = 0;
  double identity_loss = 0;  // the loss with s = 1, i.e. plain RTN
};
// Grid search over r = 0, 1/n_grid, … plus s = 1, minimising `loss(s)` (ties keep the earlier).
AwqSearchResult awq_search(const Vec& x_mean, const Vec& w_mean, const AwqOptions& options,
                           const std::function<double(const Vec& s)>& loss);
// For a mapping whose inspected output is the linear itself: loss(s) = tr(ΔW H ΔWᵀ)/out with
// ΔW = W − Q(W·diag s)·diag(s)⁻¹ and H the Hessian of its inputs.
AwqSearchResult awq_search_linear(const Mat& w, const Mat& H, const Vec& x_mean, const QuantSpec& spec,
                                  const AwqOptions& options);
// The same objective from the inputs themselves, (2/n)·Σ‖X ΔWᵀ‖²/out over the n tokens of `xs`
// (H = (2/n)·XᵀX): cheaper than the Hessian form when there are fewer tokens than inputs.
AwqSearchResult awq_search_linear_tokens(const Mat& w, const std::vector<Mat>& xs, const Vec& x_mean,
                                         const QuantSpec& spec, const AwqOptions& options);
// Q(W·diag s)·diag(s)⁻¹.
Mat awq_fake_quant(const Mat& w, const Vec& s, const QuantSpec& spec);

// AWQ as a Method, with AutoAWQ's Llama mappings (LlamaAWQForCausalLM.get_layers_for_scaling):
//   input_layernorm → [q, k, v]           inspect the attention block output (after o_proj)
//   v_proj → [o_proj]                     only when v and o have the same shape (no GQA)
//   post_attention_layernorm → [gate, up] inspect the MLP output
//   up_proj → [down_proj]                 inspect down_proj's output
// transform_layer searches every mapping on the float layer and folds the scales; quantize
// clips (not q/k) and rounds. lm_head, when planned, is plain RTN (AWQ scales decoder linears).
// With export_compatible nothing is quantized: the scaled, clipped float weights are the output.
class AwqMethod : public Method {
 public:
  explicit AwqMethod(AwqOptions options);  // throws UsageError when n_grid < 1
  const MethodTraits& traits() const override { return traits_; }
  nlohmann::json fingerprint() const override;
  LayerTransform transform_layer(const LayerContext& context, LayerWeights& layer,
                                 std::map<CapturePoint, InputStats>& stats) const override;
  QuantizedLinear quantize(const LinearInput& input) const override;
  std::int64_t hessian_block(CapturePoint p, std::int64_t in, std::int64_t tokens, std::int64_t group) const override;

 private:
  AwqOptions options_;
  MethodTraits traits_;
};

}  // namespace quant
