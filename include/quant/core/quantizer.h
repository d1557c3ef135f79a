// Uniform affine quantization of weight matrices — the core every method shares.
//
// A weight w in group g of output row o is stored as an integer code q in [0, maxq],
// maxq = 2^bits − 1, and reconstructed as ŵ = scale[o,g] · (q − zero[o,g]) (GPTQ/AWQ
// convention). Scales are rounded to fp16 when computed, so the dense ("fake quant") output
// and the packed formats reconstruct exactly the same weights.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "quant/core/tensor.h"

namespace quant {

// How a linear's inputs are quantized at inference (compressed-tensors input_activations): not
// at all (weight-only), or dynamically per token, symmetric, as int8 or float8 e4m3 (W8A8).
enum class ActQuant : std::uint8_t { none, int8, fp8 };
const char* act_quant_name(ActQuant a);  // "none", "int8", "fp8"

// How one linear's inputs are quantized at inference: the kind, and for a static scheme the
// calibrated scale of the whole tensor (compressed-tensors `input_scale`, input_activations
// strategy "tensor", dynamic false); scale 0: dynamic, one scale per token.
struct ActInput {
  ActQuant kind = ActQuant::none;
  float scale = 0.0f;
  bool is_static() const { return kind != ActQuant::none && scale > 0.0f; }
  std::string label() const;  // "none", "int8 dynamic per-token", "fp8 static per-tensor"
};

struct QuantSpec {
  int bits = 4;                  // 2..8
  std::int64_t group_size = 128; // inputs per group along `in`; -1 = one group per output row
  bool sym = false;              // symmetric: zero fixed at (maxq + 1) / 2
  bool mse = false;              // search a shrink factor of the range minimising squared error
  // Weights as float8 e4m3 times a per-output-channel scale instead of integers (needs bits 8,
  // symmetric, group -1): ŵ = scale[o]·e4m3(q).
  bool fp8 = false;
  // fp8 only: one scale for the whole tensor (compressed-tensors strategy "tensor") instead of one
  // per output channel.
  bool per_tensor = false;
  // per_tensor: the magnitude the one scale must cover when larger than the tensor's own max|w|
  // (the largest of its fused siblings', so that they share one scale and vLLM's
  // requantize_with_max_scale of qkv_proj / gate_up_proj changes nothing); 0: the tensor's own.
  float tensor_amax = 0.0f;
  ActQuant act = ActQuant::none;  // activation quantization the output declares (and eval simulates)
  // With `act`: one static scale per tensor calibrated from the inputs (max|x| / 448 for fp8,
  // llm-compressor's FP8 preset) instead of a dynamic scale per token.
  bool static_act = false;
  int maxq() const { return (1 << bits) - 1; }
  // Group size for a row of `in` inputs (in, for per-channel).
  std::int64_t effective_group(std::int64_t in) const { return group_size < 0 ? in : group_size; }
  // "w4g128", "w3g-1", "w8g-1a8" (int8 activations), "fp8", "fp8a8", "fp8t" (per tensor), "fp8ta8s" (static activations)
  std::string label() const;
  void validate() const;      // throws UsageError
};

// Quantization parameters of one group.
struct GroupParams {
  float scale = 1.0f;  // fp16-representable
  float zero = 0.0f;   // integer-valued, in [0, maxq]
};

// Min/max parameters as the GPTQ reference quantizer computes them: the range always includes
// 0; an all-zero range becomes [−1, 1]; symmetric uses max(|min|, max). Asymmetric zeros are
// kept ≥ 1 (the range is widened by one step when the ideal zero would be 0) so that the GPTQ v1
// encoding, which stores zero − 1, never underflows; this only touches groups that have no
// negative weight.
GroupParams minmax_params(float xmin, float xmax, int bits, bool sym);

// Params for the given values: min/max, or with `mse` the best of a grid of shrink factors
// p = 1, 0.99, …, 0.20 applied to the range (the GPTQ repository's --mse search with the L2
// norm), never worse than p = 1 in squared error. `weights` (optional, per element) weight the
// error of the search.
GroupParams find_params(const float* x, std::int64_t n, const QuantSpec& spec,
                        const float* weights = nullptr);

inline float quantize_code(float w, const GroupParams& p, int maxq) {
  const float q = std::nearbyint(w / p.scale) + p.zero;
  return q < 0.0f ? 0.0f : (q > static_cast<float>(maxq) ? static_cast<float>(maxq) : q);
}
inline float dequantize_code(float q, const GroupParams& p) { return p.scale * (q - p.zero); }

// A quantized [out, in] matrix.
struct QuantizedMatrix {
  int bits = 4;
  bool sym = false;
  std::int64_t out = 0;
  std::int64_t in = 0;
  std::int64_t group_size = 0;         // actual inputs per group (in, for per-channel)
  std::int64_t n_groups = 0;
  std::vector<std::uint8_t> q;         // codes [out, in], original column order
  std::vector<float> scales;           // [out, n_groups]
  std::vector<float> zeros;            // [out, n_groups], integer-valued
  std::vector<std::int32_t> g_idx;     // [in]: group of each input column
  // Non-uniform (k-means) quantization: ŵ = lut[o, g, q], [out, n_groups, 2^bits]
  // fp16-representable centroids; scales/zeros unused. Empty for affine quantization.
  std::vector<float> lut;
  // Float8 codes: q holds e4m3 bytes and ŵ = scales[o, g]·e4m3(q) (zeros unused).
  bool fp8 = false;
  bool per_tensor = false;  // fp8 with one scale for the tensor (every row's scale equal)
  // Sparse outliers (CSR over rows, columns ascending): their exact values replace the
  // reconstruction at those positions. Empty rowptr: none.
  std::vector<std::int32_t> outlier_rowptr;  // [out + 1]
  std::vector<std::int32_t> outlier_cols;    // [nnz]
  std::vector<float> outlier_vals;           // [nnz]

  bool non_uniform() const { return !lut.empty(); }
  std::int64_t n_outliers() const { return static_cast<std::int64_t>(outlier_cols.size()); }
  int n_centroids() const { return 1 << bits; }

  GroupParams params(std::int64_t o, std::int64_t g) const {
    const auto k = static_cast<std::size_t>(o * n_groups + g);
    return {scales[k], zeros[k]};
  }
  Mat dequantize() const;
  // ‖w − dequantize()‖² and ‖w‖² without materializing the dequantized matrix (rows over
  // threads, per-row double sums added in order: identical for any thread count).
  std::pair<double, double> error_and_norm(const Mat& w) const;
  // Storage bits per weight: codes, plus per-group scale (fp16) and zero (bits) or codebook
  // (2^bits fp16), plus outliers (int32 column, value of `outlier_value_bits`, int32 row pointers).
  double bits_per_weight(int outlier_value_bits = 16) const;
  // True when g_idx[j] == j / group_size for every column (no act-order permutation).
  bool trivial_g_idx() const;
  // Allocates codes and parameters for the given shape and spec, with g_idx = j / group.
  static QuantizedMatrix empty(std::int64_t out, std::int64_t in, const QuantSpec& spec);
  // The rows of `parts` stacked in order (a fused tensor from its parts). They must share bits,
  // symmetry, in, groups and g_idx (the same Hessian gives every part the same act-order).
  static QuantizedMatrix stack_rows(const std::vector<const QuantizedMatrix*>& parts);
};

// Round-to-nearest quantization of w [out, in] (parallel over rows). With spec.fp8: per row
// scale = max|w|/448 (rounded up to float16, so no weight saturates), codes e4m3(w/scale).
QuantizedMatrix quantize_rtn(const Mat& w, const QuantSpec& spec);

// What an activation-quantizing kernel computes from the inputs x [tokens, in]: each row
// (token) scaled by its own max|x| to int8 (scale max/127, round to nearest even, clamp to
// [−128, 127], vLLM's dynamic scaled_int8_quant) or to e4m3 (scale max/448, vLLM's dynamic
// per-token scaled_fp8_quant), then multiplied back. No-op for ActQuant::none.
void fake_quant_tokens(Mat& x, ActQuant act);

// What a static-scale kernel computes: every value divided by the one calibrated `scale`, then
// int8 (round to nearest even, clamp to [−128, 127], vLLM's static scaled_int8_quant) or e4m3
// (clamp to ±448, vLLM's static scaled_fp8_quant), multiplied back. Dynamic inputs (scale 0) go
// to fake_quant_tokens.
void fake_quant_input(Mat& x, const ActInput& act);

// The static scale of inputs whose largest magnitude is `amax`: amax / 448 (fp8, the minmax
// observer's symmetric float range) or amax / 127 (int8) rounded up to float16, as the fp8
// weight scales (rounding up keeps the calibration maximum from saturating); 1 for all-zero
// inputs.
float static_input_scale(ActQuant act, float amax);

// Squared reconstruction error Σ (w − ŵ)², and relative error ‖w − ŵ‖ / ‖w‖.
double squared_error(const Mat& w, const Mat& w_hat);

}  // namespace quant
