// The layer-sequential calibration loop that GPTQ and k-means share: for every decoder layer,
// sub-group by sub-group in true-sequential order ([q,k,v] → o → [gate,up] → down), the inputs
// of each capture point are computed with the layer's current (already partly quantized)
// weights, handed to the method, then each planned linear is handed over to be quantized and
// replaced by its dequantized weight; the quantized layer then produces the next layer's
// inputs. lm_head (when planned, untied) comes last, with the final-normed hidden states.
#pragma once

#include <functional>
#include <vector>

#include "quant/calibration.h"
#include "quant/pipeline.h"
#include "quant/timer.h"

namespace quant {

// Which inputs a linear reads: its capture point as an int, or kHeadInputs for lm_head.
inline constexpr int kHeadInputs = -1;
inline int input_key(const LinearDesc& l) { return l.layer < 0 ? kHeadInputs : static_cast<int>(capture_point(l.kind)); }

struct SequentialVisitor {
  // The inputs read by the linears of `key` (see input_key) for every sample ([tokens, in] each).
  std::function<void(int key, const std::vector<Mat>& inputs)> on_inputs;
  // A planned linear whose inputs were just handed over: quantize `weight`, write it to the
  // session, and leave in `weight` what inference will use (the dequantized weight).
  std::function<void(const LinearDesc& linear, const LinearPlan& plan, Mat& weight)> on_linear;
};

// Starts journaling for `samples` and, if an interrupted run's journal matches, replays it and
// moves `runner` past its layers. Returns how many layers are already done.
int resume_layers(OutputSession& session, LayerRunner& runner, const std::vector<std::vector<std::int32_t>>& samples);

void run_sequential(const Model& model, OutputSession& session, const std::vector<std::vector<std::int32_t>>& samples,
                    bool true_sequential, const SequentialVisitor& visitor, PhaseTimer& timer);

}  // namespace quant
