// The interface every quantization method implements (RTN, GPTQ, AWQ, k-means), after faiss's
// small abstract interfaces: a method says which statistic of a linear's inputs it needs, may
// transform a whole decoder layer first (AWQ's scale folding), and turns one float weight into a
// QuantizedMatrix. It knows no file, format, output session, CLI flag or exit code: the pipeline
// (include/quant/pipeline/) owns the layer loop, resuming, writing and reporting.
#pragma once

#include <any>
#include <array>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "quant/core/quantizer.h"
#include "quant/model/forward.h"
#include "quant/model/model.h"

namespace quant {

// What the layer loop measures on the inputs of each capture point for a method.
enum class Statistic {
  none,         // nothing (RTN, or k-means without calibration)
  hessian,      // H = 2/n Σ x xᵀ (GPTQ, AWQ's clipping search)
  mean_square,  // mean x_j² per input column: diag(H)/2, llama.cpp's imatrix statistic (k-means)
};

// The statistic of one capture point's inputs (the linears that read the same input share it).
struct InputStats {
  Mat hessian;                     // Statistic::hessian: [in, in]
  std::vector<float> mean_square;  // Statistic::mean_square: [in]
  // What a method derives from the statistic once and reuses for every linear reading these
  // inputs (GPTQ: the damped Cholesky factor of H⁻¹). Cleared whenever new inputs are captured.
  mutable std::any derived;
};

// Static facts about a configured method; the pipeline plans and loops from these alone.
struct MethodTraits {
  std::string name;                     // "rtn", "gptq", "awq", "kmeans", "awq-scaled"
  Statistic statistic = Statistic::none;
  bool calibrated = false;              // runs the layer-sequential loop over calibration samples
  bool true_sequential = false;         // [q,k,v] → o → [gate,up] → down, inputs re-captured between
  bool transforms_layer = false;        // transform_layer runs on each layer before its linears
  bool codebooks = false;               // non-uniform output (needs a codebook format)
  bool act_order = false;               // columns quantized out of order (needs a g_idx format)
  bool float_output = false;            // writes transformed float weights, quantizes nothing
  bool fp8_weights = false;             // handles QuantSpec::fp8 (float8 weights)
  bool moe_layers = true;               // a transforms_layer method that handles sparse (MoE) layers
  // Static activation scales can be calibrated under it: a layer transform that rescales a
  // capture point's inputs reports it in LayerTransform::input_scales.
  bool static_activations = true;
  // The next stages see each quantized linear as its dequantized weight rounded to the source
  // checkpoint's dtype (what inference computes with); false: the float32 dequantized weight.
  bool round_to_source_dtype = true;
};

// One linear handed to a method.
struct LinearInput {
  const LinearDesc& desc;
  const Mat& weight;             // [out, in] float (already transformed by transform_layer)
  const QuantSpec& spec;
  const InputStats* stats;       // null when the method is not calibrated
};

struct QuantizedLinear {
  QuantizedMatrix q;       // empty (out == 0) for float_output methods
  // The weight later stages should compute with: float_output methods' transformed weight; for
  // quantizing methods the dequantized q when the method computed it anyway (else empty, and
  // the loop dequantizes).
  Mat weight;
  nlohmann::json extra = nlohmann::json::object();  // per-tensor figures for the report
};

// A decoder layer as transform_layer sees it.
struct LayerContext {
  const ModelConfig& config;
  const LayerDesc& layer;
  const RopeTable& rope;
  std::array<bool, 7> planned{};     // by LinearKind: quantized by this run
  std::array<QuantSpec, 7> specs{};  // by LinearKind: the planned spec
  // Inputs of every capture point computed with the float layer ([tokens, in] per sample); a
  // sparse layer's mlp_in too.
  const std::map<CapturePoint, std::vector<Mat>>& inputs;
  // Sparse (MoE) layers: planned and spec of every linear of layer.linears (experts included),
  // and the fewest routed calibration tokens an expert needs for its own statistics.
  std::vector<bool> planned_all{};
  std::vector<QuantSpec> specs_all{};
  std::int64_t moe_min_tokens = 0;
};

struct LayerTransform {
  std::map<LinearKind, nlohmann::json> extra;  // merged into each linear's report
  std::map<std::string, nlohmann::json> extra_by_prefix;  // the same for experts' linears, by prefix
  // Per capture point whose inputs the transform divided by s column-wise (the folded norm
  // before it): the inputs already captured become x / s.
  std::map<CapturePoint, Vec> input_scales;
  // Layer tensors (norm weights) the transform changed, to be written in place of the source's.
  std::vector<std::pair<std::string, Vec>> changed;
  std::vector<std::pair<std::string, Mat>> changed_matrices;  // the same for 2-D tensors (an MoE router)
};

class Method {
 public:
  virtual ~Method() = default;
  virtual const MethodTraits& traits() const = 0;
  // Settings written into quantization_config (e.g. GPTQ's desc_act, damp_percent).
  virtual nlohmann::json config() const { return nlohmann::json::object(); }
  // Further settings that change the result (part of the resume fingerprint).
  virtual nlohmann::json fingerprint() const { return nlohmann::json::object(); }
  // Only when traits().transforms_layer: changes `layer` so that it computes the same function
  // (e.g. folds AWQ scales), and rescales `stats` of any capture point whose inputs it changed.
  virtual LayerTransform transform_layer(const LayerContext& context, LayerWeights& layer,
                                         std::map<CapturePoint, InputStats>& stats) const;
  virtual QuantizedLinear quantize(const LinearInput& input) const = 0;
  // Statistic::hessian: the width of the diagonal blocks of H that are all the method reads of
  // capture point `p`'s statistic (`in` columns, `tokens` calibration tokens), given that every
  // linear quantized from it uses groups of width `group` (0: they differ or there is none);
  // 0 (the default): the whole H. The layer loop then accumulates only those blocks.
  virtual std::int64_t hessian_block(CapturePoint, std::int64_t /*in*/, std::int64_t /*tokens*/, std::int64_t /*group*/) const {
    return 0;
  }
};

// Computes `statistic` of the inputs xs ([tokens, in] per sample); hessian_block as above.
InputStats measure_inputs(Statistic statistic, const std::vector<Mat>& xs, std::int64_t hessian_block = 0);

}  // namespace quant
