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

Mat load_lut(const Model& model, const LinearDesc& l) {
  const std::string p = l.prefix;
  const std::string where = model.dir().string();
  const TensorInfo& lt = model.store().get(p + ".lookup_table");
  if (lt.shape.size() != 2 && lt.shape.size() != 3) fail("{}: '{}.lookup_table' must be [out, 2^bits] or [out, groups, 2^bits]", where, p);
  const std::int64_t K = lt.shape.back();
  const std::int64_t n_groups = lt.shape.size() == 3 ? lt.shape[1] : 1;
  int bits = 0;
  while (bits <= 8 && (std::int64_t{1} << bits) != K) ++bits;
  if (bits < 2 || bits > 8) fail("{}: '{}.lookup_table' has {} entries per codebook, not 2^bits for 2..8 bits", where, p, K);
  if (n_groups <= 0 || n_groups > l.in) fail("{}: '{}.lookup_table' has {} groups for {} inputs", where, p, n_groups, l.in);
  LutTensors t;
  t.qweight = read_exact<std::int32_t>(model, p + ".qweight", DType::I32, {code_rows(l.in, bits), l.out});
  t.lookup_table = read_exact<std::uint16_t>(model, p + ".lookup_table", DType::F16, lt.shape);
  if (model.store().contains(p + ".outlier_rowptr")) {
    t.outlier_rowptr = read_exact<std::int32_t>(model, p + ".outlier_rowptr", DType::I32, {l.out + 1});
    const TensorInfo& ct = model.store().get(p + ".outlier_cols");
    if (ct.shape.size() != 1) fail("{}: '{}.outlier_cols' must be 1-D", where, p);
    const std::int64_t nnz = ct.shape[0];
    t.outlier_cols = read_exact<std::int32_t>(model, p + ".outlier_cols", DType::I32, {nnz});
    const TensorInfo& vt = model.store().get(p + ".outlier_vals");
    if (vt.shape != std::vector<std::int64_t>{nnz} || !is_float(vt.dtype)) {
      fail("{}: '{}.outlier_vals' must be a float vector of {} values", where, p, nnz);
    }
    t.outlier_vals = model.store().read_f32(p + ".outlier_vals");
    if (t.outlier_rowptr.front() != 0 || t.outlier_rowptr.back() != nnz) {
      fail("{}: '{}.outlier_rowptr' must run from 0 to {}", where, p, nnz);
    }
    for (std::int64_t o = 0; o < l.out; ++o) {
      const auto a = t.outlier_rowptr[static_cast<std::size_t>(o)], b = t.outlier_rowptr[static_cast<std::size_t>(o) + 1];
      if (b < a) fail("{}: '{}.outlier_rowptr' decreases at row {}", where, p, o);
      for (auto i = a; i < b; ++i) {
        const auto c = t.outlier_cols[static_cast<std::size_t>(i)];
        if (c < 0 || c >= l.in || (i > a && c <= t.outlier_cols[static_cast<std::size_t>(i) - 1])) {
          fail("{}: '{}.outlier_cols'[{}] = {} is out of range or out of order", where, p, i, c);
        }
      }
    }
  }
  return unpack_lut(t, l.out, l.in, bits, n_groups).dequantize();
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
  } else if (method == "squeezellm") {
    w = load_lut(model, linear);
  } else {
    fail("{}: '{}' is stored packed but config.json's quantization_config.quant_method is '{}' (supported: gptq, awq, squeezellm)",
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
