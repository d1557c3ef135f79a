// SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for
// Large Language Models", arXiv:2211.10438) as llm-compressor's SmoothQuantModifier applies it
// before a weight quantizer: activation outliers are migrated into the weights by a per input
// channel scale s folded into the preceding norm (X/s) and the linears that read it (W·s), so
// that per-token int8 activations lose less. Mappings (DEFAULT_SMOOTHQUANT_MAPPINGS):
//   input_layernorm → [q, k, v],   post_attention_layernorm → [gate, up]
// and, per channel j, with calibration activations X of the mapping's input:
//   s_j = range(X_j)^α / (2·max_i |W_ij|)^(1−α),   range = max − min over the tokens,
// the max over all the mapping's linears, s_j ≥ 1e-5; α (smoothing_strength) defaults to 0.5.
// One deviation: a channel whose activations or weights are all zero keeps s_j = 1 (instead of
// the 1e-5 floor, which would multiply its norm weight by 1e5 for nothing).
#pragma once

#include <memory>
#include <vector>

#include "quant/methods/method.h"

namespace quant {

// The smoothing scales of one mapping: per channel range of `xs` ([tokens, in] each) and the
// linears `ws` ([out, in] each) reading them.
Vec smoothing_scales(const std::vector<Mat>& xs, const std::vector<const Mat*>& ws, double alpha);

// The strength that selects, per mapping, the α of {0, 0.1, …, 1} (or no smoothing) whose
// balance linears' outputs err least on a subsample of at most 2048 calibration tokens, with the
// weights RTN-quantized by their spec and the inputs by their activation quantization:
// Σ_k ‖X W_kᵀ − A(X/s) Q(W_k·diag s)ᵀ‖² (Intel Neural Compressor's "auto" α, per mapping).
inline constexpr double kAutoStrength = -1.0;
inline constexpr int kAutoGrid = 10;

// Wraps a weight quantizer (rtn, gptq): transform_layer smooths each layer whose mapped linears
// are all planned for int8 or fp8 activations, then the inner method quantizes the smoothed
// weights. The wrapped method's traits are kept, made calibrated (the activation ranges come
// from calibration samples) and layer-transforming.
class SmoothedMethod : public Method {
 public:
  // linear_mappings: also smooth the inputs of o_proj (v_proj rows absorb 1/s; only without
  // GQA, as AWQ) and down_proj (up_proj rows absorb 1/s).
  SmoothedMethod(std::unique_ptr<Method> inner, double alpha, bool linear_mappings = false);
  const MethodTraits& traits() const override { return traits_; }
  nlohmann::json config() const override;
  nlohmann::json fingerprint() const override;
  LayerTransform transform_layer(const LayerContext& context, LayerWeights& layer,
                                 std::map<CapturePoint, InputStats>& stats) const override;
  QuantizedLinear quantize(const LinearInput& input) const override { return inner_->quantize(input); }

 private:
  std::unique_ptr<Method> inner_;
  double alpha_;
  bool linear_mappings_;
  MethodTraits traits_;
};

}  // namespace quant
