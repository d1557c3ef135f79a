// Reading packed linears: shapes are checked against the layout before anything is unpacked.
#include "quant/formats/packed.h"

#include <cstring>

#include "quant/error.h"
#include "quant/formats/formats.h"

namespace quant::formats {

namespace {

template <typename T>
std::vector<T> read_exact(const Model& model, const std::string& name, DType dtype,
                          const std::vector<std::int64_t>& shape) {
  const TensorStore& s = model.store();
  const TensorInfo& t = s.get(name);
  if (t.dtype != dtype || t.shape != shape) {
    fail("{}: tensor '{}' is {} {} but the {} layout needs {} {}", s.file_of(name).string(), name,
         dtype_name(t.dtype), fmt::join(t.shape, "x"), model.config().quantization_config.value("quant_method", "?"),
         dtype_name(dtype), fmt::join(shape, "x"));
  }
  std::vector<T> v(static_cast<std::size_t>(t.numel()));
  auto b = s.bytes(name);
  std::memcpy(v.data(), b.data(), b.size());
  return v;
}

std::int64_t dim(const Model& model, const std::string& name, std::size_t axis) {
  const TensorInfo& t = model.store().get(name);
  if (t.shape.size() != 2) fail("{}: tensor '{}' must be 2-D", model.store().file_of(name).string(), name);
  return t.shape[axis];
}

Mat load_gptq(const Model& model, const LinearDesc& l) {
  const std::string p = l.prefix;
  const std::int64_t rows = dim(model, p + ".qweight", 0);
  if ((rows * 32) % l.in != 0 || rows * 32 / l.in < 2 || rows * 32 / l.in > 8) {
    fail("{}: '{}.qweight' has {} rows, which is no whole bit width for {} inputs", model.dir().string(), p, rows, l.in);
  }
  const int bits = static_cast<int>(rows * 32 / l.in);
  if ((l.out * bits) % 32 != 0) fail("{}: '{}': {} outputs cannot be packed at {} bits", model.dir().string(), p, l.out, bits);
  const std::int64_t n_groups = dim(model, p + ".scales", 0);
  if (n_groups <= 0 || n_groups > l.in) fail("{}: '{}.scales' has {} groups for {} inputs", model.dir().string(), p, n_groups, l.in);
  GptqTensors t;
  t.qweight = read_exact<std::int32_t>(model, p + ".qweight", DType::I32, {rows, l.out});
  t.qzeros = read_exact<std::int32_t>(model, p + ".qzeros", DType::I32, {n_groups, l.out * bits / 32});
  t.scales = read_exact<std::uint16_t>(model, p + ".scales", DType::F16, {n_groups, l.out});
  if (model.store().contains(p + ".g_idx")) {
    t.g_idx = read_exact<std::int32_t>(model, p + ".g_idx", DType::I32, {l.in});
    for (std::size_t j = 0; j < t.g_idx.size(); ++j) {
      if (t.g_idx[j] < 0 || t.g_idx[j] >= n_groups) {
        fail("{}: '{}.g_idx'[{}] = {} is outside [0, {})", model.dir().string(), p, j, t.g_idx[j], n_groups);
      }
    }
  } else {
    const std::int64_t g = (l.in + n_groups - 1) / n_groups;
    for (std::int64_t j = 0; j < l.in; ++j) t.g_idx.push_back(static_cast<std::int32_t>(j / g));
  }
  return unpack_gptq(t, l.out, l.in, bits).dequantize();
}

Mat load_awq(const Model& model, const LinearDesc& l) {
  const std::string p = l.prefix;
  if (l.out % 8 != 0) fail("{}: '{}': {} outputs cannot be in the awq layout", model.dir().string(), p, l.out);
  const std::int64_t n_groups = dim(model, p + ".scales", 0);
  if (n_groups <= 0 || l.in % n_groups != 0) fail("{}: '{}.scales' has {} groups for {} inputs", model.dir().string(), p, n_groups, l.in);
  AwqTensors t;
  t.qweight = read_exact<std::int32_t>(model, p + ".qweight", DType::I32, {l.in, l.out / 8});
  t.qzeros = read_exact<std::int32_t>(model, p + ".qzeros", DType::I32, {n_groups, l.out / 8});
  t.scales = read_exact<std::uint16_t>(model, p + ".scales", DType::F16, {n_groups, l.out});
  return unpack_awq(t, l.out, l.in, l.in / n_groups).dequantize();
}

}  // namespace

Mat load_packed_linear(const Model& model, const LinearDesc& linear) {
  const auto& qc = model.config().quantization_config;
  const std::string method = qc.is_object() ? qc.value("quant_method", std::string()) : std::string();
  Mat w;
  if (method == "gptq") {
    const std::string fmt_name = qc.value("checkpoint_format", std::string("gptq"));
    if (fmt_name != "gptq") fail("{}: checkpoint_format '{}' is not supported (gptq v1 only)", model.dir().string(), fmt_name);
    w = load_gptq(model, linear);
  } else if (method == "awq") {
    const std::string version = qc.value("version", std::string("gemm"));
    if (version != "gemm" && version != "GEMM") fail("{}: awq version '{}' is not supported (gemm only)", model.dir().string(), version);
    w = load_awq(model, linear);
  } else {
    fail("{}: '{}' is stored packed but config.json's quantization_config.quant_method is '{}' (supported: gptq, awq)",
         model.dir().string(), linear.prefix, method);
  }
  // Kernels dequantize in the model's dtype (scale · (q − zero) in fp16/bf16); so do we, which
  // also makes packed and dense outputs of the same quantization identical.
  const std::string& dt = model.config().torch_dtype;
  for (Eigen::Index i = 0; i < w.size(); ++i) {
    float& x = w.data()[i];
    if (dt == "float16") x = f16_to_f32(f32_to_f16(x));
    else if (dt == "bfloat16") x = bf16_to_f32(f32_to_bf16(x));
    if (!std::isfinite(x)) fail("{}: '{}' dequantizes to a non-finite value", model.dir().string(), linear.prefix);
  }
  return w;
}

}  // namespace quant::formats
