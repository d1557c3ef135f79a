// The one quantization loop every method runs through (RTN, GPTQ, AWQ, k-means).
//
// Uncalibrated methods quantize each planned linear straight from the checkpoint. Calibrated
// ones run layer-sequentially: for every decoder layer, sub-group by sub-group in
// true-sequential order ([q,k,v] → o → [gate,up] → down; one group of all seven otherwise), the
// inputs of each capture point are computed with the layer's current (already partly quantized)
// weights and measured (the method's Statistic); a layer-transforming method (AWQ) then changes
// the layer; each planned linear is quantized, written, and replaced by the weight inference
// will use; the quantized layer produces the next layer's inputs. lm_head (planned, untied)
// comes last, with the final-normed hidden states. Resuming and interruption live here too.
#pragma once

#include <functional>
#include <vector>

#include "quant/core/timer.h"
#include "quant/methods/method.h"
#include "quant/model/calibration.h"
#include "quant/pipeline/session.h"

namespace quant {

// Quantizes every planned linear of `session` with `method` (samples: the calibration windows,
// empty for uncalibrated methods). `done` is called after each linear is written.
void run_layer_loop(const Model& model, OutputSession& session, const Method& method,
                    const std::vector<std::vector<std::int32_t>>& samples,
                    const std::function<void(const LinearDesc&)>& done, PhaseTimer& timer);

// The same walk over the float model, quantizing nothing (imatrix statistics, --target-bpw
// sensitivities): for every decoder layer, `visit(layer, weights, point, inputs)` for the four
// capture points in forward order, then, with `head`, `visit(nullptr, nullptr, attn_in,
// final-normed hidden states)` for lm_head's inputs.
using FloatVisitor = std::function<void(const LayerDesc* layer, const LayerWeights* weights, CapturePoint point,
                                        const std::vector<Mat>& inputs)>;
void observe_float_model(const Model& model, const std::vector<std::vector<std::int32_t>>& samples, bool head,
                         const FloatVisitor& visit);

// Refuses a sparse (MoE) model for a layer-transforming method without an expert-aware form
// (SmoothQuant; AWQ has one): UsageError, before any output.
void check_moe_support(const Model& model, const MethodTraits& traits);

// Starts journaling for `samples` and, if an interrupted run's journal matches, replays it and
// moves `runner` past its layers. Returns how many layers are already done.
int resume_layers(OutputSession& session, LayerRunner& runner, const std::vector<std::vector<std::int32_t>>& samples);

// Plans, quantizes and publishes: the session for `plan`, the loop, the finished checkpoint.
QuantizeReport quantize_model(const Model& model, const Plan& plan, const Method& method, RunOptions run,
                              const std::vector<std::vector<std::int32_t>>& samples, const StepProgress& progress = {});

}  // namespace quant
