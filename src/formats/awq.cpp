#include <map>

#include "codec_detail.h"
#include "quant/core/dtype.h"
#include "quant/formats/formats.h"

// AutoAWQ GEMM (version "gemm"), 4-bit: qweight, qzeros, scales.
namespace quant::formats {

AwqTensors pack_awq(const QuantizedMatrix& m) {
  const std::int64_t cols = m.out / 8;
  AwqTensors t;
  t.qweight.assign(static_cast<std::size_t>(m.in * cols), 0);
  t.qzeros.assign(static_cast<std::size_t>(m.n_groups * cols), 0);
  t.scales.resize(static_cast<std::size_t>(m.n_groups * m.out));
  for (std::int64_t j = 0; j < m.in; ++j) {
    for (std::int64_t c = 0; c < cols; ++c) {
      std::uint32_t word = 0;
      for (int k = 0; k < 8; ++k) {
        const std::int64_t o = 8 * c + kAwqOrder[k];
        word |= static_cast<std::uint32_t>(m.q[static_cast<std::size_t>(o * m.in + j)]) << (4 * k);
      }
      t.qweight[static_cast<std::size_t>(j * cols + c)] = static_cast<std::int32_t>(word);
    }
  }
  for (std::int64_t g = 0; g < m.n_groups; ++g) {
    for (std::int64_t c = 0; c < cols; ++c) {
      std::uint32_t word = 0;
      for (int k = 0; k < 8; ++k) {
        const std::int64_t o = 8 * c + kAwqOrder[k];
        word |= static_cast<std::uint32_t>(m.params(o, g).zero) << (4 * k);
      }
      t.qzeros[static_cast<std::size_t>(g * cols + c)] = static_cast<std::int32_t>(word);
    }
    for (std::int64_t o = 0; o < m.out; ++o) t.scales[static_cast<std::size_t>(g * m.out + o)] = f32_to_f16(m.params(o, g).scale);
  }
  return t;
}

QuantizedMatrix unpack_awq(const AwqTensors& t, std::int64_t out, std::int64_t in, std::int64_t group_size) {
  QuantSpec spec;
  spec.bits = 4;
  spec.group_size = group_size;
  QuantizedMatrix m = QuantizedMatrix::empty(out, in, spec);
  const std::int64_t cols = out / 8;
  for (std::int64_t j = 0; j < in; ++j) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto word = static_cast<std::uint32_t>(t.qweight[static_cast<std::size_t>(j * cols + c)]);
      for (int k = 0; k < 8; ++k) {
        m.q[static_cast<std::size_t>((8 * c + kAwqOrder[k]) * in + j)] = static_cast<std::uint8_t>((word >> (4 * k)) & 0xF);
      }
    }
  }
  for (std::int64_t g = 0; g < m.n_groups; ++g) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto word = static_cast<std::uint32_t>(t.qzeros[static_cast<std::size_t>(g * cols + c)]);
      for (int k = 0; k < 8; ++k) {
        m.zeros[static_cast<std::size_t>((8 * c + kAwqOrder[k]) * m.n_groups + g)] = static_cast<float>((word >> (4 * k)) & 0xF);
      }
    }
    for (std::int64_t o = 0; o < out; ++o) {
      m.scales[static_cast<std::size_t>(o * m.n_groups + g)] = f16_to_f32(t.scales[static_cast<std::size_t>(g * out + o)]);
    }
  }
  return m;
}

namespace {

std::string awq_unsupported(std::int64_t out, std::int64_t in, const QuantSpec& spec) {
  const std::int64_t g = spec.effective_group(in);
  if (spec.bits != 4) return fmt::format("the awq GEMM layout is 4-bit only (asked for {} bits)", spec.bits);
  if (out % 8 != 0) return fmt::format("{} output features: the awq layout needs a multiple of 8", out);
  if (in % g != 0) return fmt::format("{} input features are not a multiple of the group size {}", in, g);
  return {};
}

std::string awq_refuses(const MethodOutput& o) {
  if (o.act_order) return "the awq format cannot store act-order (desc_act) permutations; use --format gptq or drop --act-order";
  return refuses_affine(o, "awq");
}

void awq_write(SafetensorsWriter& w, const LinearToWrite& l) {
  const QuantizedMatrix& m = l.m;
  const std::string& p = l.desc.prefix;
  if (m.non_uniform()) fail<Error>("'{}': codebooks cannot be stored in the awq format", p);
  check_f16_range(m.scales, "group scale", l.desc, "awq");
  if (!m.trivial_g_idx()) fail<Error>("'{}': the awq layout cannot store an act-order permutation", p);
  const auto t = pack_awq(m);
  w.add_pod<std::int32_t>(p + ".qweight", DType::I32, {m.in, m.out / 8}, t.qweight);
  w.add_pod<std::int32_t>(p + ".qzeros", DType::I32, {m.n_groups, m.out / 8}, t.qzeros);
  w.add_pod<std::uint16_t>(p + ".scales", DType::F16, {m.n_groups, m.out}, t.scales);
  if (!l.bias.empty()) w.add_f32(l.desc.bias_name(), DType::F16, {m.out}, l.bias);
}

// AutoAWQ keeps lm_head; modules_to_not_convert keys match as substrings of the prefix (vLLM
// is_layer_skipped_awq; AutoAWQ tests the block-relative name, a suffix of it).
std::optional<QuantSpec> awq_expected(const nlohmann::json& qc, const LinearDesc& l, const fs::path& where) {
  if (l.layer < 0) return std::nullopt;
  if (qc.contains("modules_to_not_convert") && !qc["modules_to_not_convert"].is_null()) {
    const auto& keys = qc["modules_to_not_convert"];
    if (!keys.is_array()) fail("{}: quantization_config.modules_to_not_convert must be a list of names", where.string());
    for (const auto& k : keys) {
      if (!k.is_string()) fail("{}: quantization_config.modules_to_not_convert holds a non-string {}", where.string(), k.dump());
      if (l.prefix.find(k.get<std::string>()) != std::string::npos) return std::nullopt;
    }
  }
  QuantSpec s;
  s.bits = static_cast<int>(config_int(qc, qc.contains("w_bit") ? "w_bit" : "bits", 4, where));
  s.group_size = config_int(qc, qc.contains("q_group_size") ? "q_group_size" : "group_size", 128, where);
  s.sym = !config_bool(qc, "zero_point", true, where);
  return s;
}

Mat awq_read(const Model& model, const LinearDesc& l) {
  const std::string version = model.config().quantization_config.value("version", std::string("gemm"));
  if (version != "gemm" && version != "GEMM") fail("{}: awq version '{}' is not supported (gemm only)", model.dir().string(), version);
  const std::string p = l.prefix;
  if (l.out % 8 != 0) fail("{}: '{}': {} outputs cannot be in the awq layout", model.dir().string(), p, l.out);
  const std::int64_t n_groups = dim(model, p + ".scales", 0);
  if (n_groups <= 0 || l.in % n_groups != 0) fail("{}: '{}.scales' has {} groups for {} inputs", model.dir().string(), p, n_groups, l.in);
  AwqTensors t;
  t.qweight = read_exact<std::int32_t>(model, p + ".qweight", DType::I32, {l.in, l.out / 8});
  t.qzeros = read_exact<std::int32_t>(model, p + ".qzeros", DType::I32, {n_groups, l.out / 8});
  t.scales = read_exact<std::uint16_t>(model, p + ".scales", DType::F16, {n_groups, l.out});
  const QuantizedMatrix m = unpack_awq(t, l.out, l.in, l.in / n_groups);
  const fs::path where = model.dir() / "config.json";
  if (const auto e = awq_expected(model.config().quantization_config, l, where)) check_matches_config(m, *e, l, where, false);
  return m.dequantize();
}

nlohmann::json awq_config(const ConfigInput& in) {
  const nlohmann::json meta = {{"quantizer", {"quant:0.1.0"}}, {"method", in.method}};
  nlohmann::json q = {{"quant_method", "awq"}, {"bits", in.base.bits}, {"group_size", in.base.group_size},
                      {"zero_point", true}, {"version", "gemm"}, {"meta", meta}};
  merge_into(q, in.method_config);
  q["modules_to_not_convert"] = in.not_converted_blocks.empty() ? nlohmann::json(nullptr) : nlohmann::json(in.not_converted_blocks);
  return q;
}

// AutoAWQ (awq/models/base.py) quantizes decoder blocks only and matches modules_to_not_convert
// with `key in name` against block-relative names (awq/utils/module.py
// exclude_layers_to_not_quantize); vLLM (quantization/awq.py is_layer_skipped_awq) tests the
// same keys as substrings of each layer's prefix. A kept linear is expressible only when it is
// kept in every layer.
std::string awq_check_plan(const std::vector<PlannedLinear>& linears) {
  std::map<std::string, std::pair<int, int>> kept_of;  // block-relative name → (kept, total)
  for (const PlannedLinear& p : linears) {
    if (p.desc->layer < 0) {
      if (p.quantize) return "lm_head cannot be quantized in the awq format (AutoAWQ quantizes decoder layers only); drop --quantize-lm-head or use --format gptq";
      continue;
    }
    auto& [kept, total] = kept_of[block_relative_name(*p.desc)];
    kept += !p.quantize;
    ++total;
  }
  for (const auto& [name, counts] : kept_of) {
    if (counts.first > 0 && counts.first < counts.second) {
      return fmt::format("'{}' is kept in {} of {} layers: AutoAWQ's modules_to_not_convert names modules inside every decoder "
                         "block and cannot keep one layer's alone; keep it in all layers, or use --format gptq (per-module `dynamic`)",
                         name, counts.first, counts.second);
    }
  }
  return {};
}

}  // namespace

Codec awq_codec() {
  return {Format::awq, "awq", "awq", {".qweight", ".qzeros", ".scales"}, {4}, true, false,
          awq_unsupported, awq_refuses, awq_write, awq_read, awq_config, awq_check_plan, awq_expected, {4}};
}

}  // namespace quant::formats
