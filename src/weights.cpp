#include "quant/weights.h"

#include <cmath>

#include "quant/error.h"
#include "quant/formats/packed.h"

namespace quant {

namespace {
void check_finite_span(const float* p, std::size_t n, const Model& model, const std::string& name) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) {
      fail("{}: tensor '{}' contains a non-finite value ({}) at flat index {}",
           model.store().file_of(name).string(), name, p[i], i);
    }
  }
}
}  // namespace

Mat load_matrix(const Model& model, const std::string& name) {
  const TensorInfo& t = model.store().get(name);
  if (t.shape.size() != 2) fail("{}: tensor '{}' must be 2-D", model.store().file_of(name).string(), name);
  Mat m(t.shape[0], t.shape[1]);
  model.store().read_f32_into(name, m.data());
  check_finite_span(m.data(), static_cast<std::size_t>(m.size()), model, name);
  return m;
}

Vec load_vector(const Model& model, const std::string& name) {
  const TensorInfo& t = model.store().get(name);
  Vec v(t.numel());
  model.store().read_f32_into(name, v.data());
  check_finite_span(v.data(), static_cast<std::size_t>(v.size()), model, name);
  return v;
}

Mat load_linear(const Model& model, const LinearDesc& linear) {
  if (model.storage(linear) == LinearStorage::packed) return formats::load_packed_linear(model, linear);
  return load_matrix(model, linear.weight_name());
}

void check_finite(const Mat& m, const std::string& what) {
  for (Eigen::Index i = 0; i < m.size(); ++i) {
    if (!std::isfinite(m.data()[i])) fail("{}: non-finite value ({}) at flat index {}", what, m.data()[i], i);
  }
}

void round_to_dtype(Mat& w, DType dtype) {
  if (dtype == DType::F16) w = w.unaryExpr([](float x) { return f16_to_f32(f32_to_f16(x)); });
  if (dtype == DType::BF16) w = w.unaryExpr([](float x) { return bf16_to_f32(f32_to_bf16(x)); });
}

}  // namespace quant
