// The codec table and what is shared by the codecs.
#include <cmath>
#include <map>
#include <regex>

#include "codec_detail.h"
#include "quant/core/dtype.h"
#include "quant/formats/gguf_import.h"
#include "quant/io/gguf.h"

namespace quant::formats {

Codec gptq_codec();
Codec awq_codec();
Codec dense_codec();
Codec lut_codec();
Codec compressed_tensors_codec();

const std::vector<Codec>& codecs() {
  static const std::vector<Codec> table = {gptq_codec(), awq_codec(), dense_codec(), lut_codec(), compressed_tensors_codec()};
  return table;
}

const Codec& codec(Format f) {
  for (const Codec& c : codecs()) {
    if (c.format == f) return c;
  }
  fail<Error>("no codec for format {}", static_cast<int>(f));
}

Format parse_format(const std::string& name) {
  std::string names;
  for (const Codec& c : codecs()) {
    if (name == c.name) return c.format;
    names += (names.empty() ? "" : ", ") + std::string(c.name);
  }
  fail<UsageError>("unknown format '{}' ({})", name, names);
}

std::string format_name(Format f) { return codec(f).name; }

const Codec* codec_for_config(const nlohmann::json& qc) {
  const std::string method = qc.is_object() ? qc.value("quant_method", std::string()) : std::string();
  // FP8 checkpoints (compressed-tensors float-quantized, quant_method "fp8") hold F8_E4M3
  // weights, int-quantized ones I8 weights, that load_linear reads through their scales: a
  // float source, no packed codec.
  if (method == "compressed-tensors") {
    const std::string f = qc.value("format", std::string("pack-quantized"));
    if (f == "float-quantized" || f == "int-quantized" || f == "naive-quantized") return nullptr;
  }
  for (const Codec& c : codecs()) {
    if (c.quant_method && method == c.quant_method) return &c;
  }
  if (method == "squeezellm") return &codec(Format::lut);  // the lut label of quant before 0.2
  return nullptr;
}

std::vector<std::string> all_linear_suffixes() {
  std::vector<std::string> s = {".weight", ".bias"};
  for (const Codec& c : codecs()) {
    for (const auto& x : c.suffixes) {
      if (std::find(s.begin(), s.end(), x) == s.end()) s.push_back(x);
    }
  }
  return s;
}

std::string unsupported_reason(Format format, std::int64_t out, std::int64_t in, const QuantSpec& spec) {
  if (format != Format::compressed_tensors && spec.act != ActQuant::none) {
    return "activation quantization (W8A8) is stored only in compressed-tensors (int-quantized / float-quantized); use --format compressed-tensors";
  }
  if (format != Format::compressed_tensors && format != Format::dense && spec.fp8) {
    return "float8 weights are stored only in compressed-tensors (float-quantized) or dense (dequantized)";
  }
  return codec(format).unsupported(out, in, spec);
}

void check_f16_range(std::span<const float> v, const char* what, const LinearDesc& l, const char* format) {
  float worst = 0.0f;
  for (float x : v) worst = std::max(worst, std::abs(x));
  if (worst > 65504.0f) {
    fail("'{}': a {} of {:g} does not fit float16 (largest 65504), which the {} format stores it in; use "
         "--format dense with a float32 model, or keep the tensor (--rule '{}=skip')",
         l.weight_name(), what, worst, format, regex_escape(l.prefix));
  }
}

void merge_into(nlohmann::json& q, const nlohmann::json& extra) {
  for (auto it = extra.begin(); it != extra.end(); ++it) q[it.key()] = it.value();
}

bool same_spec(const QuantSpec& a, const QuantSpec& b) {
  return a.bits == b.bits && a.group_size == b.group_size && a.sym == b.sym && a.fp8 == b.fp8 && a.act == b.act;
}

std::vector<std::string> fast_kernels(Format format, const std::vector<PlannedLinear>& linears) {
  bool any = false, bits48 = true, bits4 = true, sym = true, groups = true;
  const PlannedLinear* first = nullptr;
  for (const PlannedLinear& p : linears) {
    if (!p.quantize) continue;
    any = true;
    if (!first) first = &p;
    bits48 = bits48 && (p.spec.bits == 4 || p.spec.bits == 8);
    bits4 = bits4 && p.spec.bits == 4;
    sym = sym && p.spec.sym;
    const std::int64_t g = p.spec.group_size;
    groups = groups && (g == -1 || g == 32 || g == 64 || g == 128);
  }
  std::vector<std::string> k;
  if (!any) return k;
  if (format == Format::gptq) {
    if (bits48 && sym && groups) k.push_back("vllm gptq_marlin");
    if (bits4) k.push_back("exllamav2");
  }
  if (format == Format::awq && bits4 && groups) k.push_back("vllm awq_marlin");
  if (format == Format::compressed_tensors) {  // one scheme per checkpoint (the plan shares fp8/act)
    const QuantSpec& s = first->spec;
    if (s.act == ActQuant::int8) k.push_back("vllm cutlass int8 (CompressedTensorsW8A8Int8)");
    else if (s.act == ActQuant::fp8) k.push_back("vllm cutlass fp8 (CompressedTensorsW8A8Fp8)");
    else if (s.fp8) k.push_back("vllm fp8 marlin (CompressedTensorsW8A16Fp8)");
    else if (bits48 && groups) k.push_back("vllm marlin (CompressedTensorsWNA16)");
  }
  return k;
}

namespace {
std::string describe(const PlannedLinear& p) {
  if (!p.quantize) return "kept unquantized";
  return fmt::format("{}-bit{}, group {}, {}{}", p.spec.bits, p.spec.fp8 ? " fp8" : "", p.spec.group_size, p.spec.sym ? "sym" : "asym",
                     p.spec.act == ActQuant::none ? "" : fmt::format(", {} activations", act_quant_name(p.spec.act)));
}
}  // namespace

std::string plan_refusal(const Codec& codec, const std::vector<PlannedLinear>& linears) {
  for (const PlannedLinear& p : linears) {  // stored fused (Phi-3): one tensor, one spec, always
    if (!p.desc->fused()) continue;
    for (const PlannedLinear& q : linears) {
      if (q.desc->fused() && q.desc->storage == p.desc->storage && (q.quantize != p.quantize || (p.quantize && !same_spec(q.spec, p.spec)))) {
        return fmt::format("'{}' and '{}' are stored in one tensor '{}' and need one quantization ({} vs {})", p.desc->prefix,
                           q.desc->prefix, p.desc->storage, describe(p), describe(q));
      }
    }
  }
  if (codec.fused_share_spec) {
    // vllm/model_executor/models/llama.py packed_modules_mapping fuses q/k/v and gate/up;
    // quantization/utils/gptq_utils.py override_config resolves one config per fused prefix,
    // and a fused layer with some shards quantized and some not is an error.
    std::map<std::string, const PlannedLinear*> first;
    for (const PlannedLinear& p : linears) {
      const std::string fused = fused_prefix(*p.desc);
      if (fused == p.desc->prefix) continue;
      const auto [it, fresh] = first.emplace(fused, &p);
      if (fresh) continue;
      const PlannedLinear& a = *it->second;
      if (a.quantize != p.quantize || (p.quantize && !same_spec(a.spec, p.spec))) {
        return fmt::format("'{}' is {} but '{}' is {}: vLLM fuses them into '{}', which needs one quantization config for all its "
                           "parts; give the siblings the same rule (e.g. --rule '{}=...'), or use --format dense",
                           a.desc->prefix, describe(a), p.desc->prefix, describe(p), fused,
                           regex_escape(fused.substr(0, fused.rfind('.') + 1)));
      }
    }
  }
  if (!codec.expert_bits.empty()) {  // the loaders' MoE kernels (Codec::expert_bits)
    const auto& ok = codec.expert_bits;
    for (const PlannedLinear& p : linears) {
      if (p.quantize && p.desc->expert >= 0 && std::find(ok.begin(), ok.end(), p.spec.bits) == ok.end()) {
        return fmt::format("'{}' is {}: vLLM's MoE kernels for the {} format take {}-bit experts only; use those bits for the "
                           "experts (e.g. --rule 'experts\\.=bits:{}'), or --format dense",
                           p.desc->prefix, describe(p), codec.name, fmt::join(ok, "- or "), ok.front());
      }
    }
  }
  if (!codec.per_module_specs) {
    const PlannedLinear* base = nullptr;
    for (const PlannedLinear& p : linears) {
      if (!p.quantize) continue;
      if (!base) base = &p;
      else if (!same_spec(base->spec, p.spec)) {
        return fmt::format("'{}' is {} but '{}' is {}: the {} format has one bits/group_size/zero_point for the whole model "
                           "(no per-module overrides); use --format gptq (per-module `dynamic`) or dense",
                           base->desc->prefix, describe(*base), p.desc->prefix, describe(p), codec.name);
      }
    }
  }
  return codec.check_plan ? codec.check_plan(linears) : std::string();
}

std::int64_t config_int(const nlohmann::json& qc, const char* key, std::int64_t fallback, const fs::path& where) {
  if (!qc.contains(key) || qc[key].is_null()) return fallback;
  if (!qc[key].is_number_integer()) fail("{}: quantization_config.{} must be an integer, found {}", where.string(), key, qc[key].dump());
  return qc[key].get<std::int64_t>();
}

bool config_bool(const nlohmann::json& qc, const char* key, bool fallback, const fs::path& where) {
  if (!qc.contains(key) || qc[key].is_null()) return fallback;
  if (!qc[key].is_boolean()) fail("{}: quantization_config.{} must be true or false, found {}", where.string(), key, qc[key].dump());
  return qc[key].get<bool>();
}

bool re_match(const std::string& pattern, const std::string& text, const fs::path& where) {
  try {
    return std::regex_search(text, std::regex(pattern), std::regex_constants::match_continuous);
  } catch (const std::regex_error& e) {
    fail("{}: quantization_config.dynamic key '{}' is not a valid regular expression ({})", where.string(), pattern, e.what());
  }
}

std::optional<QuantSpec> apply_dynamic(const nlohmann::json& qc, const LinearDesc& l, QuantSpec base, const fs::path& where) {
  if (!qc.contains("dynamic") || qc["dynamic"].is_null()) return base;
  if (!qc["dynamic"].is_object()) fail("{}: quantization_config.dynamic must be an object", where.string());
  for (const auto& [key, value] : qc["dynamic"].items()) {
    const bool negative = key.rfind("-:", 0) == 0;
    const std::string pattern = negative || key.rfind("+:", 0) == 0 ? key.substr(2) : key;
    if (!re_match(pattern, l.prefix, where)) continue;
    if (negative) return std::nullopt;
    if (!value.is_object()) fail("{}: quantization_config.dynamic['{}'] must be an object", where.string(), key);
    base.bits = static_cast<int>(config_int(value, "bits", base.bits, where));
    base.group_size = config_int(value, "group_size", base.group_size, where);
    base.sym = config_bool(value, "sym", base.sym, where);
    return base;
  }
  return base;
}

void check_matches_config(const QuantizedMatrix& m, const QuantSpec& e, const LinearDesc& l, const fs::path& where, bool check_sym) {
  if (m.bits != e.bits) {
    fail("{}: tensor '{}.qweight' holds {}-bit codes but quantization_config gives it bits {}", where.string(), l.prefix, m.bits, e.bits);
  }
  const std::int64_t groups = (l.in + e.effective_group(l.in) - 1) / e.effective_group(l.in);
  if (m.n_groups != groups) {
    fail("{}: tensor '{}.scales' has {} groups but quantization_config gives it group_size {} ({} groups for {} inputs)",
         where.string(), l.prefix, m.n_groups, e.group_size, groups, l.in);
  }
  if (check_sym && e.sym) {
    const float mid = static_cast<float>(1 << (e.bits - 1));
    for (std::size_t i = 0; i < m.zeros.size(); ++i) {
      if (m.zeros[i] != mid) {
        fail("{}: tensor '{}.qzeros' has zero point {} but quantization_config says sym: true (zero {} everywhere)", where.string(),
             l.prefix, m.zeros[i], mid);
      }
    }
  }
}

namespace {
// compressed-tensors int-/float-quantized: a linear the config quantizes is an I8 (int) or
// F8_E4M3 (float) `weight` with its `weight_scale`; one it keeps is a float weight.
void verify_naive_ct(const Model& model, const nlohmann::json& qc) {
  const fs::path where = model.dir() / "config.json";
  for (const LinearDesc* l : model.linears()) {
    if (l->fused() || !model.store().contains(l->weight_name())) continue;
    const std::optional<QuantSpec> e = compressed_tensors_spec(qc, *l, where);
    const DType dt = model.store().get(l->weight_name()).dtype;
    const DType want = e ? (e->fp8 ? DType::F8_E4M3 : DType::I8) : dt;
    if (e && dt != want) {
      fail("{}: tensor '{}' is {} but quantization_config ({}) quantizes it as {} {}-bit; vLLM would look for {} weights",
           model.store().file_of(l->weight_name()).string(), l->weight_name(), dtype_name(dt), qc.value("format", std::string()),
           e->fp8 ? "float" : "int", e->bits, dtype_name(want));
    }
    if (!e && !is_float(dt)) {
      fail("{}: tensor '{}' is {} but quantization_config keeps '{}' in float (ignore / no matching target)",
           model.store().file_of(l->weight_name()).string(), l->weight_name(), dtype_name(dt), l->prefix);
    }
    // vLLM's scale parameters (compressed_tensors_w8a8_fp8.py / _int8.py create_weights): strategy
    // "channel" a ChannelQuantScaleParameter [out, 1], "tensor" a PerTensorScaleParameter that
    // loads one value per stored tensor.
    if (e) {
      const std::string scale = l->prefix + ".weight_scale";
      if (!model.store().contains(scale)) {
        fail("{}: '{}' is quantized but has no '{}'", model.store().file_of(l->weight_name()).string(), l->prefix, scale);
      }
      const std::vector<std::int64_t>& shape = model.store().get(scale).shape;
      const bool tensor_shaped = shape.empty() || shape == std::vector<std::int64_t>{1};
      const bool channel_shaped = shape == std::vector<std::int64_t>{l->out, 1};
      if (e->per_tensor ? !tensor_shaped : !(channel_shaped || (!e->fp8 && tensor_shaped))) {
        fail("{}: tensor '{}' has {} values ({}-D); quantization_config's {} strategy needs shape {}", model.store().file_of(scale).string(), scale,
             model.store().get(scale).numel(), shape.size(), e->per_tensor ? "tensor" : "channel",
             e->per_tensor ? std::string("[1]") : fmt::format("[{}, 1]", l->out));
      }
      // A static activation scheme: vLLM registers an input_scale PerTensorScaleParameter and
      // loads one per stored tensor (compressed_tensors_w8a8_fp8.py create_weights,
      // is_static_input_scheme); the act reader checks it (shape, positive, finite).
      if (e->static_act) (void)compressed_tensors_act_quant(model, *l);
    }
  }
}
}  // namespace

void verify_against_config(const Model& model) {
  const auto& qc = model.config().quantization_config;
  const Codec* c = codec_for_config(qc);
  if (!c && qc.is_object() && qc.value("quant_method", std::string()) == "compressed-tensors" &&
      (qc.value("format", std::string()) == "int-quantized" || qc.value("format", std::string()) == "float-quantized")) {
    return verify_naive_ct(model, qc);
  }
  if (!c || !c->expected) return;
  const fs::path where = model.dir() / "config.json";
  for (const LinearDesc* l : model.linears()) {
    const bool packed = model.storage(*l) == LinearStorage::packed;
    const std::optional<QuantSpec> e = c->expected(qc, *l, where);
    if (e && !packed) {
      fail("{}: tensor '{}' is a float weight but quantization_config ({} format) quantizes it ({}-bit); loaders would look for "
           "'{}{}'", model.store().file_of(l->weight_name()).string(), l->weight_name(), c->name, e->bits, l->prefix, c->suffixes.front());
    }
    if (!e && packed) {
      fail("{}: '{}' is stored packed but quantization_config ({} format) keeps it in float (lm_head, dynamic '-:' or "
           "modules_to_not_convert, ignore); loaders would look for '{}'", model.store().file_of(l->prefix + c->suffixes.front()).string(), l->prefix,
           c->name, l->weight_name());
    }
  }
}

Mat decode_packed_linear(const Model& model, const LinearDesc& linear) {
  const auto& qc = model.config().quantization_config;
  const Codec* c = codec_for_config(qc);
  if (!c || !c->read) {
    std::string known;
    for (const Codec& k : codecs()) {
      if (k.quant_method) known += (known.empty() ? "" : ", ") + std::string(k.quant_method);
    }
    fail("{}: '{}' is stored packed but config.json's quantization_config.quant_method is '{}' (supported: {})",
         model.dir().string(), linear.prefix, qc.is_object() ? qc.value("quant_method", std::string()) : std::string(), known);
  }
  Mat w = c->read(model, linear);
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

Model open_model(const fs::path& dir, bool allow_gguf) {
  if (gguf::is_gguf_file(dir)) {
    if (!allow_gguf) {
      fail<UsageError>("{}: is a GGUF file; quant reads GGUF input in `quant eval` and `quant inspect` only (quantize from the HF checkpoint)",
                       dir.string());
    }
    return open_gguf_model(dir);
  }
  Model m = Model::open(dir, &decode_packed_linear);
  verify_against_config(m);
  m.set_act_quant_reader(&compressed_tensors_act_quant);
  return m;
}

}  // namespace quant::formats
