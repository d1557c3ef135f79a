#include "codec_detail.h"
#include "quant/core/dtype.h"
#include "quant/formats/formats.h"

// GPTQ v1 (AutoGPTQ/GPTQModel checkpoint_format "gptq"): qweight, qzeros, scales, g_idx.
namespace quant::formats {

GptqTensors pack_gptq(const QuantizedMatrix& m) {
  const std::int64_t zcols = m.out * m.bits / 32;
  GptqTensors t;
  t.qzeros.resize(static_cast<std::size_t>(m.n_groups * zcols));
  t.scales.resize(static_cast<std::size_t>(m.n_groups * m.out));
  t.g_idx = m.g_idx;
  t.qweight = pack_code_columns(m);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(m.out));
  std::vector<std::uint32_t> words(static_cast<std::size_t>(zcols) + 1);
  const std::uint32_t mask = (1u << m.bits) - 1u;
  for (std::int64_t g = 0; g < m.n_groups; ++g) {
    for (std::int64_t o = 0; o < m.out; ++o) {
      const GroupParams p = m.params(o, g);
      codes[o] = static_cast<std::uint32_t>(static_cast<std::int64_t>(p.zero) - 1) & mask;  // v1 stores zero − 1
      t.scales[static_cast<std::size_t>(g * m.out + o)] = f32_to_f16(p.scale);
    }
    pack_bits(codes.data(), static_cast<std::size_t>(m.out), m.bits, words.data());
    for (std::int64_t k = 0; k < zcols; ++k) t.qzeros[static_cast<std::size_t>(g * zcols + k)] = static_cast<std::int32_t>(words[k]);
  }
  return t;
}

QuantizedMatrix unpack_gptq(const GptqTensors& t, std::int64_t out, std::int64_t in, int bits) {
  const std::int64_t zcols = out * bits / 32;
  const std::int64_t n_groups = static_cast<std::int64_t>(t.scales.size()) / out;
  QuantizedMatrix m = unpacked_shape(out, in, bits, n_groups);
  m.g_idx = t.g_idx;
  m.scales.resize(static_cast<std::size_t>(out * n_groups));
  m.zeros.resize(static_cast<std::size_t>(out * n_groups));
  m.q = unpack_code_columns(t.qweight, out, in, bits);
  std::vector<std::uint32_t> words(static_cast<std::size_t>(zcols) + 1, 0u);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(out));
  for (std::int64_t g = 0; g < n_groups; ++g) {
    for (std::int64_t k = 0; k < zcols; ++k) words[k] = static_cast<std::uint32_t>(t.qzeros[static_cast<std::size_t>(g * zcols + k)]);
    unpack_bits(words.data(), static_cast<std::size_t>(out), bits, codes.data());
    for (std::int64_t o = 0; o < out; ++o) {
      m.zeros[static_cast<std::size_t>(o * n_groups + g)] = static_cast<float>(codes[o] + 1);
      m.scales[static_cast<std::size_t>(o * n_groups + g)] = f16_to_f32(t.scales[static_cast<std::size_t>(g * out + o)]);
    }
  }
  return m;
}

namespace {

std::string gptq_unsupported(std::int64_t out, std::int64_t in, const QuantSpec& spec) {
  const std::int64_t g = spec.effective_group(in);
  // transformers GPTQConfig.post_init and vLLM GPTQConfig accept 2, 3, 4 and 8 bits only.
  if (spec.bits != 2 && spec.bits != 3 && spec.bits != 4 && spec.bits != 8) {
    return fmt::format("{}-bit: GPTQ loaders (transformers, vLLM, GPTQModel) accept 2, 3, 4 and 8 bits; use --format dense for other widths", spec.bits);
  }
  if ((in * spec.bits) % 32 != 0 || in % 32 != 0) {
    return fmt::format("{} input features: the gptq layout packs inputs in whole 32-bit words and needs a multiple of 32", in);
  }
  if ((out * spec.bits) % 32 != 0) return fmt::format("{} output features: qzeros needs out·bits to be a multiple of 32", out);
  // A group wider than the row is one group: scales have ceil(in/G) = 1 row, as loaders expect.
  if (in % g != 0 && in > g) return fmt::format("{} input features are not a multiple of the group size {}", in, g);
  return {};
}

std::string gptq_refuses(const MethodOutput& o) { return refuses_affine(o, "gptq"); }

void gptq_write(SafetensorsWriter& w, const LinearToWrite& l) {
  const QuantizedMatrix& m = l.m;
  const std::string& p = l.desc.prefix;
  if (m.non_uniform()) fail<Error>("'{}': codebooks cannot be stored in the gptq format", p);
  check_f16_range(m.scales, "group scale", l.desc, "gptq");
  const auto t = pack_gptq(m);
  w.add_pod<std::int32_t>(p + ".qweight", DType::I32, {m.in * m.bits / 32, m.out}, t.qweight);
  w.add_pod<std::int32_t>(p + ".qzeros", DType::I32, {m.n_groups, m.out * m.bits / 32}, t.qzeros);
  w.add_pod<std::uint16_t>(p + ".scales", DType::F16, {m.n_groups, m.out}, t.scales);
  w.add_pod<std::int32_t>(p + ".g_idx", DType::I32, {m.in}, t.g_idx);
  if (!l.bias.empty()) w.add_f32(l.desc.bias_name(), DType::F16, {m.out}, l.bias);
}

// transformers GPTQConfig / GPTQModel QuantizeConfig defaults: bits 4, group_size 128, sym true,
// lm_head false; `dynamic` as GPTQModel and vLLM (gptq_utils.py get_dynamic_override) apply it.
std::optional<QuantSpec> gptq_expected(const nlohmann::json& qc, const LinearDesc& l, const fs::path& where) {
  QuantSpec base;
  base.bits = static_cast<int>(config_int(qc, "bits", 4, where));
  base.group_size = config_int(qc, "group_size", 128, where);
  base.sym = config_bool(qc, "sym", true, where);
  if (l.layer < 0 && !config_bool(qc, "lm_head", false, where)) return std::nullopt;
  return apply_dynamic(qc, l, base, where);
}

Mat gptq_read(const Model& model, const LinearDesc& l) {
  const std::string fmt_name = model.config().quantization_config.value("checkpoint_format", std::string("gptq"));
  if (fmt_name != "gptq") fail("{}: checkpoint_format '{}' is not supported (gptq v1 only)", model.dir().string(), fmt_name);
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
  const QuantizedMatrix m = unpack_gptq(t, l.out, l.in, bits);
  const fs::path where = model.dir() / "config.json";
  const auto& qc = model.config().quantization_config;
  if (const auto e = gptq_expected(qc, l, where)) check_matches_config(m, *e, l, where, true);
  if (!config_bool(qc, "desc_act", false, where) && !m.trivial_g_idx()) {
    fail("{}: tensor '{}.g_idx' is permuted (act-order) but quantization_config.desc_act is false", where.string(), p);
  }
  return m.dequantize();
}


nlohmann::json gptq_config(const ConfigInput& in) {
  const nlohmann::json meta = {{"quantizer", {"quant:0.1.0"}}, {"method", in.method}};
  nlohmann::json q = {{"quant_method", "gptq"}, {"bits", in.base.bits}, {"group_size", in.base.group_size},
                      {"desc_act", false}, {"sym", in.base.sym}, {"static_groups", false},
                      {"true_sequential", true}, {"damp_percent", 0.01}, {"checkpoint_format", "gptq"},
                      {"lm_head", in.lm_head}, {"meta", meta}};
  merge_into(q, in.method_config);
  if (!in.dynamic.empty()) q["dynamic"] = in.dynamic;
  return q;
}

}  // namespace

Codec gptq_codec() {
  return {Format::gptq, "gptq", "gptq", {".qweight", ".qzeros", ".scales", ".g_idx"}, {2, 3, 4, 8}, true, true,
          gptq_unsupported, gptq_refuses, gptq_write, gptq_read, gptq_config, nullptr, gptq_expected,
          // vLLM runs a layer's experts as one FusedMoE: gptq_marlin's MoE method (uint4b8/uint8b128)
          // or moe_wna16 (quantization/moe_wna16.py is_moe_wna16_compatible: bits 4 or 8).
          {4, 8}};
}

std::string refuses_affine(const MethodOutput& o, const char* format) {
  if (o.codebooks) {
    return fmt::format("k-means codebooks cannot be stored in the {} format (affine scale/zero only); use --format lut or dense", format);
  }
  if (o.float_weights) return fmt::format("{} writes float weights: it needs the dense format", o.method);
  return {};
}

}  // namespace quant::formats
