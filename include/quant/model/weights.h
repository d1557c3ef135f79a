// Loading weights as float, whatever their storage: dense F32/F16/BF16 tensors or any packed
// format this project writes (dequantized on load), so one forward pass serves original and
// quantized checkpoints.
#pragma once

#include <string>

#include "quant/model/model.h"
#include "quant/core/tensor.h"

namespace quant {

// A linear's weight [out, in] as float.
Mat load_linear(const Model& model, const LinearDesc& linear);
// The same into w, whose storage is reused when it already has the weight's shape (a streamed
// forward reloads every layer into the buffers of the one before: no fresh pages to fault in).
void load_linear_into(const Model& model, const LinearDesc& linear, Mat& w);
// A 1-D tensor (norm weight, bias) as float.
Vec load_vector(const Model& model, const std::string& name);
// A 2-D dense tensor (embedding) as float.
Mat load_matrix(const Model& model, const std::string& name);

// Rounds float weights to a checkpoint storage dtype (F16/BF16; others unchanged), so that
// calibration sees the weights inference will use.
void round_to_dtype(Mat& w, DType dtype);

// Throws InputError naming the tensor if any value is NaN or ±inf.
void check_finite(const Mat& m, const std::string& what);

}  // namespace quant
