#include "codec_detail.h"
#include "quant/core/dtype.h"
#include "quant/formats/formats.h"

// Look-up-table format for k-means codebooks (SqueezeLLM's layout): qweight, lookup_table,
// optional CSR outliers.
namespace quant::formats {

LutTensors pack_lut(const QuantizedMatrix& m) {
  if (!m.non_uniform()) fail<Error>("pack_lut: the matrix has no codebooks");
  LutTensors t;
  t.qweight = pack_code_columns(m);
  t.lookup_table.resize(m.lut.size());
  for (std::size_t i = 0; i < m.lut.size(); ++i) t.lookup_table[i] = f32_to_f16(m.lut[i]);
  t.outlier_rowptr = m.outlier_rowptr;
  t.outlier_cols = m.outlier_cols;
  t.outlier_vals = m.outlier_vals;
  return t;
}

QuantizedMatrix unpack_lut(const LutTensors& t, std::int64_t out, std::int64_t in, int bits, std::int64_t n_groups) {
  QuantizedMatrix m = unpacked_shape(out, in, bits, n_groups);
  m.g_idx.resize(static_cast<std::size_t>(in));
  for (std::int64_t j = 0; j < in; ++j) m.g_idx[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j / m.group_size);
  m.q = unpack_code_columns(t.qweight, out, in, bits);
  m.lut.resize(t.lookup_table.size());
  for (std::size_t i = 0; i < m.lut.size(); ++i) m.lut[i] = f16_to_f32(t.lookup_table[i]);
  m.outlier_rowptr = t.outlier_rowptr;
  m.outlier_cols = t.outlier_cols;
  m.outlier_vals = t.outlier_vals;
  return m;
}

namespace {

std::string lut_unsupported(std::int64_t, std::int64_t in, const QuantSpec& spec) {
  const std::int64_t g = spec.effective_group(in);
  if (in % g != 0 && in > g) return fmt::format("{} input features are not a multiple of the group size {}", in, g);
  return {};
}

std::string lut_refuses(const MethodOutput& o) {
  if (o.float_weights) return fmt::format("{} writes float weights: it needs the dense format", o.method);
  if (!o.codebooks) return fmt::format("the lut format stores k-means codebooks; {} writes gptq, awq or dense", o.method);
  return {};
}

void lut_write(SafetensorsWriter& w, const LinearToWrite& l) {
  const QuantizedMatrix& m = l.m;
  const std::string& p = l.desc.prefix;
  if (!m.non_uniform()) fail<Error>("'{}': the lut format needs codebooks", p);
  check_f16_range(m.lut, "codebook value", l.desc, "lut");
  const DType outlier_dtype = is_float(l.weight_dtype) ? l.weight_dtype : DType::F32;
  const auto t = pack_lut(m);
  w.add_pod<std::int32_t>(p + ".qweight", DType::I32, {code_rows(m.in, m.bits), m.out}, t.qweight);
  std::vector<std::int64_t> lut_shape = {m.out, m.n_centroids()};
  if (m.n_groups > 1) lut_shape = {m.out, m.n_groups, m.n_centroids()};
  w.add_pod<std::uint16_t>(p + ".lookup_table", DType::F16, lut_shape, t.lookup_table);
  if (!t.outlier_rowptr.empty()) {
    w.add_pod<std::int32_t>(p + ".outlier_rowptr", DType::I32, {m.out + 1}, t.outlier_rowptr);
    w.add_pod<std::int32_t>(p + ".outlier_cols", DType::I32, {m.n_outliers()}, t.outlier_cols);
    w.add_f32(p + ".outlier_vals", outlier_dtype, {m.n_outliers()}, t.outlier_vals);
  }
  if (!l.bias.empty()) w.add_f32(l.desc.bias_name(), DType::F16, {m.out}, l.bias);
}

// quant's own config: bits, group_size, lm_head, modules_to_not_convert (full names), dynamic.
std::optional<QuantSpec> lut_expected(const nlohmann::json& qc, const LinearDesc& l, const fs::path& where) {
  if (l.layer < 0 && !config_bool(qc, "lm_head", false, where)) return std::nullopt;
  if (qc.contains("modules_to_not_convert") && qc["modules_to_not_convert"].is_array()) {
    for (const auto& k : qc["modules_to_not_convert"]) {
      if (k.is_string() && k.get<std::string>() == l.prefix) return std::nullopt;
    }
  }
  QuantSpec s;
  s.bits = static_cast<int>(config_int(qc, "bits", 4, where));
  s.group_size = config_int(qc, "group_size", -1, where);
  return apply_dynamic(qc, l, s, where);
}

Mat lut_read(const Model& model, const LinearDesc& l) {
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
  const QuantizedMatrix m = unpack_lut(t, l.out, l.in, bits, n_groups);
  const fs::path cfg = model.dir() / "config.json";
  if (model.config().quantization_config.value("quant_method", "") == "quant-lut") {  // legacy "squeezellm" labels: unchecked
    if (const auto e = lut_expected(model.config().quantization_config, l, cfg)) check_matches_config(m, *e, l, cfg, false);
  }
  return m.dequantize();
}

nlohmann::json lut_config(const ConfigInput& in) {
  // quant's own format (SqueezeLLM's tensor layout): vLLM removed its squeezellm method and
  // transformers does not know it, so the label says whose it is; quant eval and --format dense
  // read it. Outputs of earlier versions, labelled "squeezellm", are read as the same format.
  const nlohmann::json meta = {{"quantizer", {"quant:0.1.0"}}, {"method", in.method}};
  nlohmann::json q = {{"quant_method", "quant-lut"}, {"wbits", in.base.bits}, {"bits", in.base.bits},
                      {"group_size", in.base.group_size}, {"lm_head", in.lm_head}, {"meta", meta}};
  merge_into(q, in.method_config);
  q["modules_to_not_convert"] = in.not_converted.empty() ? nlohmann::json(nullptr) : nlohmann::json(in.not_converted);
  if (!in.dynamic.empty()) q["dynamic"] = in.dynamic;
  return q;
}

}  // namespace

Codec lut_codec() {
  return {Format::lut, "lut", "quant-lut", {".qweight", ".lookup_table", ".outlier_rowptr", ".outlier_cols", ".outlier_vals"}, {}, false, true,
          lut_unsupported, lut_refuses, lut_write, lut_read, lut_config, nullptr, lut_expected};
}

}  // namespace quant::formats
