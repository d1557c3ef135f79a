// Loading weights as float, whatever their storage: dense F32/F16/BF16 tensors or any packed
// format this project writes (dequantized on load), so one forward pass serves original and
// quantized checkpoints.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
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

// A 2-D weight as the checkpoint stores it (F16 or BF16, row-major [rows, cols]), for a forward
// pass that reads it in place (gemm_xwt_stored converts each tile as it multiplies) instead of
// holding a float copy twice its size: evaluation's layers and head.
struct RawMatrix {
  std::unique_ptr<std::byte[]> data;
  std::size_t capacity = 0;  // bytes allocated (reused by the next load of the same or a smaller size)
  DType dtype = DType::F16;
  std::int64_t rows = 0, cols = 0;
  RawMatrix() = default;
  RawMatrix(const RawMatrix& o);  // a deep copy
  RawMatrix& operator=(const RawMatrix& o);
  RawMatrix(RawMatrix&&) noexcept = default;
  RawMatrix& operator=(RawMatrix&&) noexcept = default;
  bool empty() const { return rows == 0; }
  std::size_t bytes() const { return static_cast<std::size_t>(rows * cols) * dtype_size(dtype); }
};
// Whether the dense tensor `name` can be held raw: 2-D F16/BF16, stored in a file (not computed).
bool loadable_raw(const Model& model, const std::string& name);
// Reads it into m (its buffer reused when large enough); throws InputError naming the tensor if a
// value is NaN or ±inf, as the float loaders do.
void load_raw_into(const Model& model, const std::string& name, RawMatrix& m);

// Rounds float weights to a checkpoint storage dtype (F16/BF16; others unchanged), so that
// calibration sees the weights inference will use.
void round_to_dtype(Mat& w, DType dtype);

// Throws InputError naming the tensor if any value is NaN or ±inf.
void check_finite(const Mat& m, const std::string& what);

}  // namespace quant
