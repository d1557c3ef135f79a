// RTN: round-to-nearest with min/max ranges (optionally MSE-searched clipping), one linear at
// a time from the memory-mapped checkpoint. No calibration.
#pragma once

#include "quant/pipeline.h"

namespace quant {

QuantizeReport rtn_quantize_model(const Model& model, const Policy& policy, const RunOptions& options,
                                  const StepProgress& progress = {});

}  // namespace quant
