// compressed-tensors (vLLM's native format, written by llm-compressor). "pack-quantized": integer
// weights at 4 or 8 bits packed into int32 along the input dimension, per-group or per-channel
// scales, packed zero points when asymmetric, the GPTQ act-order g_idx (weight-only, W4A16/W8A16).
// "int-quantized": int8 weights unpacked with per-channel scales and int8 dynamic per-token
// activations (W8A8). "float-quantized": float8 e4m3 weights with per-channel scales, weight-only
// or with e4m3 dynamic per-token activations (FP8_DYNAMIC). Rules and sources: docs/formats.md
// "compressed-tensors".
#include <algorithm>
#include <cmath>
#include <set>

#include "codec_detail.h"
#include "quant/core/dtype.h"
#include "quant/core/log.h"
#include "quant/formats/formats.h"
#include "quant/model/weights.h"

namespace quant::formats {

namespace {

constexpr const char* kFormat = "pack-quantized";

// compressed_tensors/compressors/quantized_compressors/pack_quantized.py pack_to_int32: signed
// values + 2^(bits−1), `32 / bits` per int32 word, value i of a word at bit i·bits, along
// `packed_dim` (1: each row's columns, 0: each column's rows), the last word zero-padded.
std::vector<std::int32_t> pack_signed(const std::vector<int>& v, std::int64_t rows, std::int64_t cols, int bits, int packed_dim) {
  const int pf = 32 / bits;
  const std::int64_t prow = packed_dim == 0 ? (rows + pf - 1) / pf : rows;
  const std::int64_t pcol = packed_dim == 1 ? (cols + pf - 1) / pf : cols;
  std::vector<std::uint32_t> words(static_cast<std::size_t>(prow * pcol), 0u);
  const int offset = 1 << (bits - 1);
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto u = static_cast<std::uint32_t>(v[static_cast<std::size_t>(r * cols + c)] + offset);
      const std::int64_t wr = packed_dim == 0 ? r / pf : r, wc = packed_dim == 1 ? c / pf : c;
      const std::int64_t slot = packed_dim == 0 ? r % pf : c % pf;
      words[static_cast<std::size_t>(wr * pcol + wc)] |= u << (slot * bits);
    }
  }
  return {words.begin(), words.end()};
}

std::vector<int> unpack_signed(const std::vector<std::int32_t>& w, std::int64_t rows, std::int64_t cols, int bits, int packed_dim) {
  const int pf = 32 / bits;
  const std::int64_t pcol = packed_dim == 1 ? (cols + pf - 1) / pf : cols;
  const std::uint32_t mask = (1u << bits) - 1u;
  const int offset = 1 << (bits - 1);
  std::vector<int> v(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t wr = packed_dim == 0 ? r / pf : r, wc = packed_dim == 1 ? c / pf : c;
      const std::int64_t slot = packed_dim == 0 ? r % pf : c % pf;
      const auto word = static_cast<std::uint32_t>(w[static_cast<std::size_t>(wr * pcol + wc)]);
      v[static_cast<std::size_t>(r * cols + c)] = static_cast<int>((word >> (slot * bits)) & mask) - offset;
    }
  }
  return v;
}

// The compressor a spec is written with (CompressionFormat values).
const char* format_of(const QuantSpec& s) {
  if (s.fp8) return "float-quantized";
  return s.act == ActQuant::int8 ? "int-quantized" : kFormat;
}

// vLLM compressed_tensors.py _get_scheme_from_parts: _is_fp8_w8a8 / _is_fp8_w8a16 (float weights,
// symmetric, static, tensor or channel; float activations when any), _is_dynamic_token_w8a8 (8-bit
// int weights, symmetric, tensor or channel, 8-bit dynamic per-token activations);
// compressed_tensors_wNa16.py (WNA16_SUPPORTED_BITS = [4, 8]) and the compressor's match_scheme
// (num_bits in (4, 8)) for pack-quantized; the zero point is packed along the outputs.
std::string ct_unsupported(std::int64_t out, std::int64_t in, const QuantSpec& spec) {
  if (spec.fp8) {
    if (spec.act == ActQuant::int8) return "float8 weights with int8 activations: vLLM has no such scheme (use fp8 activations or int8 weights)";
    return {};
  }
  if (spec.act == ActQuant::fp8) return "fp8 activations need fp8 weights (vLLM CompressedTensorsW8A8Fp8); use --scheme FP8_DYNAMIC";
  if (spec.act == ActQuant::int8) {
    if (spec.bits != 8 || !spec.sym || spec.group_size != -1) {
      return fmt::format("int8 activations (W8A8) need 8-bit symmetric per-channel weights (vLLM _is_dynamic_token_w8a8), got {} bits, "
                         "group {}, {}; use --scheme W8A8", spec.bits, spec.group_size, spec.sym ? "symmetric" : "asymmetric");
    }
    return {};
  }
  if (spec.bits != 4 && spec.bits != 8) {
    return fmt::format("{}-bit: compressed-tensors pack-quantized (vLLM CompressedTensorsWNA16) holds 4 and 8 bits; use --format gptq or dense", spec.bits);
  }
  const int pf = 32 / spec.bits;
  if (in % pf != 0) return fmt::format("{} input features: vLLM loads weight_packed as [out, in / {}] and needs a multiple of {}", in, pf, pf);
  const std::int64_t g = spec.effective_group(in);
  if (in % g != 0) return fmt::format("{} input features are not a multiple of the group size {}", in, g);
  if (!spec.sym && out % pf != 0) {
    return fmt::format("{} output features: the asymmetric zero point is packed [out / {}, groups] and needs a multiple of {}", out, pf, pf);
  }
  return {};
}

std::string ct_refuses(const MethodOutput& o) { return refuses_affine(o, "compressed-tensors"); }

DType scale_dtype(DType weight) { return weight == DType::BF16 || weight == DType::F32 ? weight : DType::F16; }

// int-quantized / float-quantized (NaiveQuantizationCompressor, FloatQuantizationCompressor):
// `weight` holds the int8 values or e4m3 bytes unpacked, [out, in]; `weight_scale` [out, 1], or
// [1] for a per-tensor fp8 scale.
void ct_write_naive(SafetensorsWriter& w, const LinearToWrite& l) {
  const QuantizedMatrix& m = l.m;
  const std::string& p = l.desc.prefix;
  const DType sdt = scale_dtype(l.weight_dtype);
  if (m.n_groups != 1) fail<Error>("'{}': int-/float-quantized weights are per channel, got {} groups", p, m.n_groups);
  if (m.fp8) {
    w.add_pod<std::uint8_t>(p + ".weight", DType::F8_E4M3, {m.out, m.in}, m.q);
  } else {
    const int mid = 1 << (m.bits - 1);
    std::vector<std::int8_t> q(m.q.size());
    for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<std::int8_t>(static_cast<int>(m.q[i]) - mid);
    for (float z : m.zeros) {
      if (z != static_cast<float>(mid)) fail<Error>("'{}': int-quantized weights must be symmetric (zero {}), got {}", p, mid, z);
    }
    w.add_pod<std::int8_t>(p + ".weight", DType::I8, {m.out, m.in}, q);
  }
  if (m.per_tensor) {  // strategy "tensor": weight_scale of shape [1] (initialize_qparams: expected_shape (1,))
    if (std::any_of(m.scales.begin(), m.scales.end(), [&](float s) { return s != m.scales.front(); })) {
      fail<Error>("'{}': a per-tensor fp8 weight has differing row scales", p);
    }
    w.add_f32(p + ".weight_scale", sdt, {1}, std::vector<float>{m.scales.front()});
  } else {
    w.add_f32(p + ".weight_scale", sdt, {m.out, 1}, m.scales);
  }
  if (l.input_scale > 0.0f) {  // a static activation scheme: the calibrated per-tensor scale, shape [1] as weight_scale's
    w.add_f32(p + ".input_scale", sdt, {1}, std::vector<float>{l.input_scale});
  }
  if (!l.bias.empty()) w.add_f32(l.desc.bias_name(), l.weight_dtype, {m.out}, l.bias);
}

void ct_write(SafetensorsWriter& w, const LinearToWrite& l) {
  const QuantizedMatrix& m = l.m;
  const std::string& p = l.desc.prefix;
  if (m.non_uniform()) fail<Error>("'{}': codebooks cannot be stored in compressed-tensors pack-quantized", p);
  const DType sdt = scale_dtype(l.weight_dtype);
  if (sdt == DType::F16) check_f16_range(m.scales, "group scale", l.desc, "compressed-tensors");
  if (m.fp8 || l.act != ActQuant::none) return ct_write_naive(w, l);
  // quant's codes are unsigned u with zero z, ŵ = s·(u − z); compressed-tensors stores signed
  // q = u − 2^(b−1) and zero point zp = z − 2^(b−1), ŵ = s·(q − zp) (quantize_weight/dequantize).
  const int mid = 1 << (m.bits - 1);
  std::vector<int> q(m.q.size());
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = static_cast<int>(m.q[i]) - mid;
  const int pf = 32 / m.bits;
  w.add_pod<std::int32_t>(p + ".weight_packed", DType::I32, {m.out, (m.in + pf - 1) / pf}, pack_signed(q, m.out, m.in, m.bits, 1));
  w.add_f32(p + ".weight_scale", sdt, {m.out, m.n_groups}, m.scales);
  if (!m.sym) {  // BaseQuantizationCompressor skips the zero point of symmetric schemes
    std::vector<int> zp(m.zeros.size());
    for (std::size_t i = 0; i < zp.size(); ++i) zp[i] = static_cast<int>(m.zeros[i]) - mid;
    w.add_pod<std::int32_t>(p + ".weight_zero_point", DType::I32, {(m.out + pf - 1) / pf, m.n_groups},
                            pack_signed(zp, m.out, m.n_groups, m.bits, 0));
  }
  w.add_pod<std::int64_t>(p + ".weight_shape", DType::I64, {2}, std::vector<std::int64_t>{m.out, m.in});
  // actorder "group" (weights_args): vLLM's WNA16 then reads weight_g_idx; one group has no order.
  if (l.act_order && m.n_groups > 1) w.add_pod<std::int32_t>(p + ".weight_g_idx", DType::I32, {m.in}, m.g_idx);
  if (!l.bias.empty()) w.add_f32(l.desc.bias_name(), l.weight_dtype, {m.out}, l.bias);
}

// vLLM compressed_tensors/utils.py: `ignore` entries and targets are exact names or "re:" +
// a pattern for re.match; a layer matches a group by name first, then by class name
// (find_matched_target: _find_first_match(layer_name) or _find_first_match(class, contains)).
bool target_matches(const std::string& target, const std::string& name, const fs::path& where) {
  if (target.rfind("re:", 0) == 0) return re_match(target.substr(3), name, where);
  return target == name;
}

const nlohmann::json& groups_of(const nlohmann::json& qc, const fs::path& where) {
  auto it = qc.find("config_groups");
  if (it == qc.end() || !it->is_object() || it->empty()) fail("{}: quantization_config.config_groups must be a non-empty object", where.string());
  return *it;
}

// The config group vLLM gives linear `l` (null: kept in float).
const nlohmann::json* ct_group(const nlohmann::json& qc, const LinearDesc& l, const fs::path& where) {
  if (auto ig = qc.find("ignore"); ig != qc.end() && ig->is_array()) {
    for (const auto& t : *ig) {
      if (t.is_string() && target_matches(t.get<std::string>(), l.prefix, where)) return nullptr;
    }
  }
  const nlohmann::json& groups = groups_of(qc, where);
  const nlohmann::json* hit = nullptr;
  for (int pass = 0; pass < 2 && !hit; ++pass) {
    for (const auto& [name, g] : groups.items()) {
      if (!g.is_object() || !g.contains("targets") || !g["targets"].is_array()) {
        fail("{}: quantization_config.config_groups.{}.targets must be a list", where.string(), name);
      }
      for (const auto& t : g["targets"]) {
        if (!t.is_string()) continue;
        const std::string s = t.get<std::string>();
        if (pass == 0 ? target_matches(s, l.prefix, where) : s == "Linear") hit = &g;
        if (hit) break;
      }
      if (hit) break;
    }
  }
  return hit;
}

// input_activations of a group, as quant's forward pass simulates them: 8-bit int or float,
// symmetric, dynamic per token or static per tensor (a calibrated `input_scale` per linear);
// none when absent. Other schemes are reported as none, with a warning.
struct GroupAct {
  ActQuant kind = ActQuant::none;
  bool is_static = false;
};
GroupAct group_act(const nlohmann::json& g, const fs::path& where) {
  const auto a = g.find("input_activations");
  if (a == g.end() || a->is_null()) return {};
  if (!a->is_object()) fail("{}: quantization_config input_activations must be an object or null", where.string());
  const std::string strategy = a->value("strategy", std::string());
  const bool dynamic = config_bool(*a, "dynamic", false, where);
  const bool token = strategy == "token" && dynamic, tensor = strategy == "tensor" && !dynamic;
  if (config_int(*a, "num_bits", 8, where) != 8 || !config_bool(*a, "symmetric", true, where) || !(token || tensor)) {
    log::warn("{}: input activations {} are neither dynamic per-token nor static per-tensor symmetric 8-bit; quant eval does not simulate them",
              where.string(), a->dump());
    return {};
  }
  return {a->value("type", std::string("int")) == "float" ? ActQuant::fp8 : ActQuant::int8, tensor};
}

// The spec the config gives linear `l` (nullopt: kept in float), as vLLM resolves it.
std::optional<QuantSpec> ct_expected(const nlohmann::json& qc, const LinearDesc& l, const fs::path& where) {
  const nlohmann::json* hit = ct_group(qc, l, where);
  if (!hit) return std::nullopt;
  const auto wq = hit->find("weights");
  if (wq == hit->end() || !wq->is_object()) fail("{}: a config group matching '{}' has no weights scheme", where.string(), l.prefix);
  const std::string type = wq->value("type", std::string("int"));
  if (type != "int" && type != "float") fail("{}: weights type '{}' is not supported (int, float)", where.string(), type);
  QuantSpec s;
  s.bits = static_cast<int>(config_int(*wq, "num_bits", 8, where));
  s.sym = config_bool(*wq, "symmetric", true, where);
  s.fp8 = type == "float";
  const GroupAct ga = group_act(*hit, where);
  s.act = ga.kind;
  s.static_act = ga.is_static;
  const std::string strategy = wq->value("strategy", std::string("tensor"));
  s.per_tensor = strategy == "tensor" && s.fp8;
  if (strategy == "channel" || (strategy == "tensor" && s.bits == 8)) s.group_size = -1;
  else if (strategy == "group") s.group_size = config_int(*wq, "group_size", 128, where);
  else fail("{}: weights strategy '{}' is not supported (group, channel; tensor for 8-bit)", where.string(), strategy);
  return s;
}

Mat ct_read(const Model& model, const LinearDesc& l) {
  const fs::path where = model.dir() / "config.json";
  const auto& qc = model.config().quantization_config;
  const std::string fmt_name = qc.value("format", std::string(kFormat));
  if (fmt_name != kFormat) fail("{}: compressed-tensors format '{}' is not supported (pack-quantized only)", where.string(), fmt_name);
  const auto e = ct_expected(qc, l, where);
  if (!e) fail("{}: '{}' is stored packed but quantization_config keeps it in float (ignore / no matching target)", where.string(), l.prefix);
  const int bits = e->bits, pf = 32 / bits;
  const std::int64_t g = e->effective_group(l.in), n_groups = (l.in + g - 1) / g;
  const std::string p = l.prefix;
  const auto shape = read_exact<std::int64_t>(model, p + ".weight_shape", DType::I64, {2});
  if (shape[0] != l.out || shape[1] != l.in) {
    fail("{}: '{}.weight_shape' says {}x{} but the model needs {}x{}", model.dir().string(), p, shape[0], shape[1], l.out, l.in);
  }
  const auto packed = read_exact<std::int32_t>(model, p + ".weight_packed", DType::I32, {l.out, (l.in + pf - 1) / pf});
  const TensorInfo& st = model.store().get(p + ".weight_scale");
  if (st.shape != std::vector<std::int64_t>{l.out, n_groups}) {
    fail("{}: '{}.weight_scale' is {} but quantization_config gives {}x{} (group size {})", model.store().file_of(p + ".weight_scale").string(), p,
         fmt::join(st.shape, "x"), l.out, n_groups, e->group_size);
  }
  const Vec scales = load_vector(model, p + ".weight_scale");
  QuantizedMatrix m = unpacked_shape(l.out, l.in, bits, n_groups);
  m.sym = e->sym;
  const int mid = 1 << (bits - 1);
  const std::vector<int> q = unpack_signed(packed, l.out, l.in, bits, 1);
  m.q.resize(q.size());
  for (std::size_t i = 0; i < q.size(); ++i) m.q[i] = static_cast<std::uint8_t>(q[i] + mid);
  m.scales.assign(scales.data(), scales.data() + scales.size());
  m.zeros.assign(m.scales.size(), static_cast<float>(mid));
  if (!e->sym) {
    const auto zw = read_exact<std::int32_t>(model, p + ".weight_zero_point", DType::I32, {(l.out + pf - 1) / pf, n_groups});
    const std::vector<int> zp = unpack_signed(zw, l.out, n_groups, bits, 0);
    for (std::size_t i = 0; i < zp.size(); ++i) m.zeros[i] = static_cast<float>(zp[i] + mid);
  } else if (model.store().contains(p + ".weight_zero_point")) {
    fail("{}: '{}' has a weight_zero_point but its config group is symmetric", model.dir().string(), p);
  }
  if (model.store().contains(p + ".weight_g_idx")) {
    m.g_idx = read_exact<std::int32_t>(model, p + ".weight_g_idx", DType::I32, {l.in});
    for (std::size_t j = 0; j < m.g_idx.size(); ++j) {
      if (m.g_idx[j] < 0 || m.g_idx[j] >= n_groups) fail("{}: '{}.weight_g_idx'[{}] = {} is outside [0, {})", model.dir().string(), p, j, m.g_idx[j], n_groups);
    }
  } else {
    for (std::int64_t j = 0; j < l.in; ++j) m.g_idx.push_back(static_cast<std::int32_t>(j / g));
  }
  return m.dequantize();
}

nlohmann::json weights_args(const QuantSpec& s, bool act_order) {
  return {{"num_bits", s.bits}, {"type", s.fp8 ? "float" : "int"}, {"symmetric", s.sym},
          {"strategy", s.per_tensor ? "tensor" : s.group_size < 0 ? "channel" : "group"},
          {"group_size", s.group_size < 0 ? nlohmann::json(nullptr) : nlohmann::json(s.group_size)},
          {"block_structure", nullptr}, {"dynamic", false},
          {"actorder", act_order && s.group_size > 0 ? nlohmann::json("group") : nlohmann::json(nullptr)},  // ActivationOrdering.GROUP
          {"observer", "minmax"}, {"observer_kwargs", nlohmann::json::object()}};
}

// llm-compressor's W8A8 / FP8_DYNAMIC presets (quant_scheme.py): dynamic, symmetric, per token,
// no observer; its FP8 preset: static, symmetric, per tensor, the default minmax observer.
nlohmann::json input_args(const QuantSpec& s) {
  if (s.act == ActQuant::none) return nullptr;
  return {{"num_bits", 8}, {"type", s.act == ActQuant::fp8 ? "float" : "int"}, {"symmetric", true}, {"group_size", nullptr},
          {"strategy", s.static_act ? "tensor" : "token"}, {"block_structure", nullptr}, {"dynamic", !s.static_act}, {"actorder", nullptr},
          {"observer", s.static_act ? nlohmann::json("minmax") : nlohmann::json(nullptr)}, {"observer_kwargs", nlohmann::json::object()}};
}

nlohmann::json group(const QuantSpec& s, bool act_order, nlohmann::json targets) {
  return {{"targets", std::move(targets)}, {"weights", weights_args(s, act_order)}, {"input_activations", input_args(s)},
          {"output_activations", nullptr}, {"format", format_of(s)}};
}

// quantization_config as llm-compressor writes it (QuantizationConfig.to_dict): the common spec
// targets "Linear"; each other spec is a group whose targets are "re:" name patterns (vLLM
// matches names before classes); kept linears are `ignore`d by name, lm_head unless quantized.
nlohmann::json ct_config(const ConfigInput& in) {
  const bool act_order = in.method_config.value("desc_act", false);
  nlohmann::json groups = nlohmann::json::object();
  std::map<std::string, std::pair<QuantSpec, nlohmann::json>> overrides;
  for (const auto& [key, value] : in.dynamic.items()) {
    if (key.rfind("+:", 0) != 0) continue;
    QuantSpec s;
    s.bits = value.at("bits").get<int>();
    s.group_size = value.at("group_size").get<std::int64_t>();
    s.sym = value.at("sym").get<bool>();
    s.fp8 = in.base.fp8;  // the scheme flags are the run's (no rule changes them)
    s.per_tensor = in.base.per_tensor;
    s.act = in.base.act;
    s.static_act = in.base.static_act;
    auto& [spec, targets] = overrides[s.label() + (s.sym ? "s" : "a")];
    spec = s;
    if (targets.is_null()) targets = nlohmann::json::array();
    targets.push_back("re:" + key.substr(2));
  }
  int n = 0;
  for (auto& [label, entry] : overrides) groups[fmt::format("group_{}", n++)] = group(entry.first, act_order, entry.second);
  groups[fmt::format("group_{}", n)] = group(in.base, act_order, nlohmann::json::array({"Linear"}));
  nlohmann::json ignore = nlohmann::json::array();
  for (const auto& name : in.not_converted) ignore.push_back(name);
  if (!in.lm_head) ignore.push_back("lm_head");
  return {{"quant_method", "compressed-tensors"}, {"format", format_of(in.base)}, {"quantization_status", "compressed"},
          {"config_groups", groups}, {"ignore", ignore}, {"kv_cache_scheme", nullptr}, {"sparsity_config", nlohmann::json::object()},
          {"version", "0.10.2"}, {"quantizer", {{"name", "quant"}, {"version", "0.1.0"}, {"method", in.method}}}};
}

// quant eval simulates activation quantization in the decoder's linears only; vLLM's lm_head
// (ParallelLMHead) is kept unquantized by llm-compressor's presets (ignore: ["lm_head"]).
std::string ct_check_plan(const std::vector<PlannedLinear>& linears) {
  for (const PlannedLinear& p : linears) {
    if (p.quantize && p.desc->layer < 0 && (p.spec.act != ActQuant::none || p.spec.fp8)) {
      return fmt::format("'{}': lm_head with {} is not supported (llm-compressor's W8A8/FP8 presets ignore lm_head); drop --quantize-lm-head",
                         p.desc->prefix, p.spec.label());
    }
  }
  return {};
}

}  // namespace

ActInput compressed_tensors_act_quant(const Model& model, const LinearDesc& l) {
  const auto& qc = model.config().quantization_config;
  if (!qc.is_object() || qc.value("quant_method", std::string()) != "compressed-tensors") return {};
  const fs::path where = model.dir() / "config.json";
  const nlohmann::json* g = ct_group(qc, l, where);
  if (!g) return {};
  const GroupAct ga = group_act(*g, where);
  if (!ga.is_static) return {ga.kind, 0.0f};
  // vLLM's PerTensorScaleParameter takes a scalar or a [1] tensor per linear (per fused part).
  const std::string name = l.storage_desc().prefix + ".input_scale";
  if (!model.store().contains(name)) {
    fail("{}: '{}' is missing: quantization_config declares static input activations for '{}'", model.dir().string(), name, l.prefix);
  }
  const TensorInfo& t = model.store().get(name);
  if (t.numel() != 1 || t.shape.size() > 1) {
    fail("{}: '{}' is {} but a static per-tensor input scale is a scalar or [1]", model.store().file_of(name).string(), name, fmt::join(t.shape, "x"));
  }
  const Vec v = load_vector(model, name);
  if (!(v(0) > 0.0f) || !std::isfinite(v(0))) fail("{}: '{}' is {}: an input scale must be positive and finite", model.store().file_of(name).string(), name, v(0));
  return {ga.kind, v(0)};
}

std::optional<QuantSpec> compressed_tensors_spec(const nlohmann::json& qc, const LinearDesc& l, const fs::path& where) {
  return ct_expected(qc, l, where);
}

Codec compressed_tensors_codec() {
  return {Format::compressed_tensors, "compressed-tensors", "compressed-tensors",
          {".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape", ".weight_g_idx", ".input_scale"}, {4, 8}, true, true,
          ct_unsupported, ct_refuses, ct_write, ct_read, ct_config, ct_check_plan, ct_expected};
}

}  // namespace quant::formats
