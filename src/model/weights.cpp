#include "quant/model/weights.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant/core/dtype.h"
#include "quant/core/error.h"

namespace quant {

namespace {
void check_finite_span(const float* p, std::size_t n, const Model& model, const std::string& name) {
  if (const std::size_t i = first_non_finite(p, n); i < n) {
    fail("{}: tensor '{}' contains a non-finite value ({}) at flat index {}",
         model.store().file_of(name).string(), name, p[i], i);
  }
}
}  // namespace

namespace {
void load_matrix_into(const Model& model, const std::string& name, Mat& m) {
  const TensorInfo& t = model.store().get(name);
  if (t.shape.size() != 2) fail("{}: tensor '{}' must be 2-D", model.store().file_of(name).string(), name);
  m.resize(t.shape[0], t.shape[1]);  // keeps the storage when the shape is unchanged
  model.store().read_f32_into(name, m.data());
  check_finite_span(m.data(), static_cast<std::size_t>(m.size()), model, name);
}
}  // namespace

RawMatrix::RawMatrix(const RawMatrix& o) : capacity(o.bytes()), dtype(o.dtype), rows(o.rows), cols(o.cols) {
  if (capacity) {
    data.reset(new std::byte[capacity]);
    std::memcpy(data.get(), o.data.get(), capacity);
  }
}

RawMatrix& RawMatrix::operator=(const RawMatrix& o) {
  if (this != &o) *this = RawMatrix(o);
  return *this;
}

bool loadable_raw(const Model& model, const std::string& name) {
  const TensorStore& s = model.store();
  const TensorInfo* t = s.find(name);
  return t && t->shape.size() == 2 && (t->dtype == DType::F16 || t->dtype == DType::BF16) && s.has_bytes(name);
}

void load_raw_into(const Model& model, const std::string& name, RawMatrix& m) {
  if (!loadable_raw(model, name)) fail<Error>("load_raw_into: tensor '{}' is not a stored 2-D F16/BF16 tensor", name);
  const TensorInfo& t = model.store().get(name);
  m.dtype = t.dtype;
  m.rows = t.shape[0];
  m.cols = t.shape[1];
  if (m.capacity < m.bytes()) {
    m.data.reset();  // freed before the larger one is allocated
    m.data.reset(new std::byte[m.bytes()]);
    m.capacity = m.bytes();
  }
  const std::size_t n = static_cast<std::size_t>(m.rows * m.cols);
  if (const std::size_t i = model.store().read_bytes_into(name, m.data.get(), first_non_finite_16); i < n) {
    float v = 0;
    convert_span_to_f32(m.dtype, m.data.get() + 2 * i, 1, &v);
    fail("{}: tensor '{}' contains a non-finite value ({}) at flat index {}", model.store().file_of(name).string(), name, v, i);
  }
}

Mat load_matrix(const Model& model, const std::string& name) {
  Mat m;
  load_matrix_into(model, name, m);
  return m;
}

Vec load_vector(const Model& model, const std::string& name) {
  const TensorInfo& t = model.store().get(name);
  Vec v(t.numel());
  model.store().read_f32_into(name, v.data());
  check_finite_span(v.data(), static_cast<std::size_t>(v.size()), model, name);
  return v;
}

namespace {
// FP8 checkpoints as published: an F8_E4M3 (or compressed-tensors int-quantized I8) weight times
// `weight_scale` (compressed-tensors float-/int-quantized: one per tensor or per output channel) or `weight_scale_inv` (quant_method
// "fp8", DeepSeek-V3/Qwen3-FP8: one per weight_block_size block, default 128×128).
void apply_fp8_scale(const Model& model, const std::string& prefix, Mat& w) {
  const TensorStore& s = model.store();
  const std::string name = s.contains(prefix + ".weight_scale") ? prefix + ".weight_scale" : prefix + ".weight_scale_inv";
  if (!s.contains(name)) {
    fail("{}: tensor '{}.weight' is 8-bit but has no '{}.weight_scale' or '.weight_scale_inv' to dequantize it with",
         s.file_of(prefix + ".weight").string(), prefix, prefix);
  }
  const TensorInfo& t = s.get(name);
  const Vec scale = load_vector(model, name);
  const Eigen::Index out = w.rows(), in = w.cols();
  if (scale.size() == 1) {
    w *= scale(0);
  } else if (scale.size() == out && (t.shape.size() == 1 || (t.shape.size() == 2 && t.shape[1] == 1))) {
    for (Eigen::Index o = 0; o < out; ++o) w.row(o) *= scale(o);
  } else if (t.shape.size() == 2) {
    std::int64_t bo = 128, bi = 128;
    const auto& qc = model.config().quantization_config;
    if (qc.is_object() && qc.contains("weight_block_size") && qc["weight_block_size"].is_array() && qc["weight_block_size"].size() == 2) {
      bo = qc["weight_block_size"][0].get<std::int64_t>();
      bi = qc["weight_block_size"][1].get<std::int64_t>();
    }
    if (bo <= 0 || bi <= 0 || t.shape[0] != (out + bo - 1) / bo || t.shape[1] != (in + bi - 1) / bi) {
      fail("{}: tensor '{}' is {}x{}, which is no per-tensor, per-channel or {}x{}-block scale of a {}x{} weight",
           s.file_of(name).string(), name, t.shape[0], t.shape[1], bo, bi, out, in);
    }
    for (Eigen::Index o = 0; o < out; ++o) {
      for (Eigen::Index j = 0; j < in; ++j) w(o, j) *= scale(static_cast<Eigen::Index>((o / bo) * t.shape[1] + j / bi));
    }
  } else {
    fail("{}: tensor '{}' has {} values, which is no scale of a {}x{} weight", s.file_of(name).string(), name, scale.size(), out, in);
  }
}
}  // namespace

Mat load_linear(const Model& model, const LinearDesc& linear) {
  if (linear.fused()) {  // its rows of the stored fused tensor (read whole: dense or packed alike)
    const Mat all = load_linear(model, linear.storage_desc());
    return all.middleRows(linear.row_offset, linear.out);
  }
  if (model.storage(linear) == LinearStorage::packed) {
    if (!model.packed_reader()) {
      fail("{}: '{}' is stored packed (quantized) and this model was opened without a format reader", model.dir().string(), linear.prefix);
    }
    return model.packed_reader()(model, linear);
  }
  Mat w;
  load_linear_into(model, linear, w);
  return w;
}

void load_linear_into(const Model& model, const LinearDesc& linear, Mat& w) {
  if (linear.fused() || model.storage(linear) == LinearStorage::packed) {
    w = load_linear(model, linear);
    return;
  }
  load_matrix_into(model, linear.weight_name(), w);
  const DType dt = model.store().get(linear.weight_name()).dtype;
  if (dt == DType::F8_E4M3 || dt == DType::I8) apply_fp8_scale(model, linear.tensor_prefix(), w);
}

void check_finite(const Mat& m, const std::string& what) {
  const auto n = static_cast<std::size_t>(m.size());
  if (const std::size_t i = first_non_finite(m.data(), n); i < n) {
    fail("{}: non-finite value ({}) at flat index {}", what, m.data()[i], i);
  }
}

void round_to_dtype(Mat& w, DType dtype) {
  if (dtype == DType::F16) w = w.unaryExpr([](float x) { return f16_to_f32(f32_to_f16(x)); });
  if (dtype == DType::BF16) w = w.unaryExpr([](float x) { return bf16_to_f32(f32_to_bf16(x)); });
}

}  // namespace quant
