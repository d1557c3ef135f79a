// Reading the packed checkpoint formats this project writes (gptq, awq, lut): dispatch on
// config.json's quantization_config.
#pragma once

#include "quant/model.h"
#include "quant/tensor.h"

namespace quant::formats {

// Dequantizes a packed linear ([out, in] float) from the model's checkpoint.
Mat load_packed_linear(const Model& model, const LinearDesc& linear);

}  // namespace quant::formats
