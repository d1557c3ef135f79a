// GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
// Transformers", arXiv:2210.17323), Algorithm 1: columns are quantized in order, each one's
// error spread over the not-yet-quantized columns through the Cholesky factor of H⁻¹, with
// lazy batch updates in blocks; H = 2/n Σ x xᵀ of the layer's calibration inputs.
#pragma once

#include <string>
#include <vector>

#include "quant/core/quantizer.h"
#include "quant/methods/method.h"

namespace quant {

struct GptqOptions {
  double damp = 0.01;             // λ = damp · mean(diag H) added to the diagonal
  std::int64_t block_size = 128;  // lazy-batch block (aligned to the group size when needed)
  bool act_order = false;         // desc_act: columns by descending diag H
  bool static_groups = false;     // group parameters from the original weights, before GPTQ
  bool true_sequential = true;    // [q,k,v] → o → [gate,up] → down, re-capturing inputs
  int max_damp_retries = 4;       // on a failed Cholesky: damping ×10, up to this many times
};

// H prepared for GPTQ: dead columns, act-order permutation, damping and U, the upper Cholesky
// factor of (H + λI)⁻¹ (in permuted order). Shared by linears with the same input.
struct GptqHessian {
  std::vector<std::int64_t> perm;  // position -> original column (identity without act-order)
  std::vector<bool> dead;          // diag H == 0 (input always zero)
  Mat U;
  double damp = 0;                 // λ actually used
  int retries = 0;
};

// Throws InputError naming `what` when H + λI is not positive definite even after retries.
GptqHessian prepare_hessian(const Mat& H, const GptqOptions& options, const std::string& what);

struct GptqResult {
  QuantizedMatrix q;
  double obs_loss = 0;  // Σ (w − q)² / U_ii² / 2, the reference implementation's "error"
};

GptqResult gptq_quantize(const Mat& W, const GptqHessian& H, const QuantSpec& spec, const GptqOptions& options);

// tr(ΔW H ΔWᵀ) = Σ over calibration tokens of ‖ΔW x‖² · 2/n: the layer-output error GPTQ
// minimises, comparable across methods under the same H.
double hessian_loss(const Mat& dW, const Mat& H);

// GPTQ as a Method: statistic H per capture point (its damped Cholesky factor computed once per
// point and shared by the linears reading it), report figures obs_loss, gptq_loss and rtn_loss
// (tr(ΔW H ΔWᵀ) from at most 256 sampled rows), damp and damp_retries.
class GptqMethod : public Method {
 public:
  explicit GptqMethod(GptqOptions options);  // throws UsageError for a negative or NaN damp
  const MethodTraits& traits() const override { return traits_; }
  nlohmann::json config() const override;
  nlohmann::json fingerprint() const override;
  QuantizedLinear quantize(const LinearInput& input) const override;

 private:
  GptqOptions options_;
  MethodTraits traits_;
};

}  // namespace quant
