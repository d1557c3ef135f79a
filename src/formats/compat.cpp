#include "quant/formats/compat.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>

#include "codec_detail.h"
#include "quant/formats/codec.h"
#include "quant/io/gguf.h"
#include "quant/model/weights.h"

namespace quant::formats {

bool CheckReport::pass() const {
  return std::all_of(rules.begin(), rules.end(), [](const RuleResult& r) { return r.pass; });
}

namespace {

constexpr const char* kTfGptq = "transformers utils/quantization_config.py GPTQConfig.post_init";
constexpr const char* kVllmGptq = "vllm model_executor/layers/quantization/gptq.py GPTQConfig";
constexpr const char* kVllmDynamic = "vllm quantization/utils/gptq_utils.py override_config, get_dynamic_override";
constexpr const char* kGptqModel = "GPTQModel quantization/config.py QuantizeConfig.__post_init__";
constexpr const char* kAutoAwq = "AutoAWQ awq/models/base.py from_quantized, awq/utils/module.py exclude_layers_to_not_quantize";
constexpr const char* kVllmAwq = "vllm model_executor/layers/quantization/awq.py AWQConfig, is_layer_skipped_awq";
constexpr const char* kVllmCt = "vllm quantization/compressed_tensors/compressed_tensors.py _get_scheme_from_parts (_is_wNa16_group_channel, "
                                "_is_fp8_w8a8, _is_fp8_w8a16, _is_dynamic_token_w8a8), schemes/compressed_tensors_wNa16.py WNA16_SUPPORTED_BITS";
constexpr const char* kVllmCtMatch = "vllm quantization/compressed_tensors/utils.py find_matched_target, should_ignore_layer";
constexpr const char* kTfCt = "transformers quantizers/quantizer_compressed_tensors.py, compressed_tensors ModelCompressor";

struct Checker {
  CheckReport& rep;
  void add(const std::string& loader, const std::string& rule, bool pass, std::string detail, const char* source) {
    if (std::find(rep.loaders.begin(), rep.loaders.end(), loader) == rep.loaders.end()) return;
    rep.rules.push_back({loader, rule, pass, std::move(detail), source});
  }
  void all(const std::vector<std::string>& loaders, const std::string& rule, bool pass, const std::string& detail, const char* source) {
    for (const auto& l : loaders) add(l, rule, pass, detail, source);
  }
};

// Each loader has a model class for the model_type (docs/architectures.md lists the sources).
struct Known {
  const char* loader;
  std::vector<std::string> types;
  const char* source;
};
const std::vector<Known> kKnown = {
      {"transformers", {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe"},
       "transformers models/auto/modeling_auto.py MODEL_FOR_CAUSAL_LM_MAPPING_NAMES"},
      {"vllm", {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe"},
       "vllm model_executor/models/registry.py _TEXT_GENERATION_MODELS"},
      {"gptqmodel", {"llama", "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3", "mixtral", "qwen2_moe", "qwen3_moe"},
       "GPTQModel models/auto.py MODEL_MAP"},
      {"autoawq", {"llama", "mistral", "qwen2", "gemma2", "phi3", "mixtral"}, "AutoAWQ awq/models/auto.py AWQ_CAUSAL_LM_MODEL_MAP (00c3dfa)"},
};

bool has_model_class(const std::string& loader, const std::string& model_type) {
  for (const Known& kn : kKnown) {
    if (kn.loader == loader) return std::find(kn.types.begin(), kn.types.end(), model_type) != kn.types.end();
  }
  return true;
}

void check_model_type(const Model& m, Checker& k) {
  const std::string& t = m.config().model_type;
  for (const Known& kn : kKnown) {
    const bool ok = std::find(kn.types.begin(), kn.types.end(), t) != kn.types.end();
    k.add(kn.loader, "has a model class for model_type '" + t + "'", ok, ok ? "yes" : "no entry for '" + t + "'", kn.source);
  }
}

// The tensors agree with the config as every loader reads it (verify_against_config and the
// codecs' per-tensor checks).
std::string tensors_disagree(const Model& m) {
  try {
    verify_against_config(m);
    for (const LinearDesc* l : m.linears()) {
      if (m.storage(*l) == LinearStorage::packed) load_linear(m, *l);
    }
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

// Fused siblings (q/k/v, gate/up) resolve to one spec under the config, as vLLM needs.
std::string fused_disagree(const Model& m, const Codec& c) {
  const auto& qc = m.config().quantization_config;
  std::map<std::string, std::pair<const LinearDesc*, std::optional<QuantSpec>>> first;
  for (const LinearDesc* l : m.linears()) {
    const std::string fused = fused_prefix(*l);
    if (fused == l->prefix) continue;
    const auto e = c.expected(qc, *l, m.dir() / "config.json");
    const auto [it, fresh] = first.emplace(fused, std::make_pair(l, e));
    if (fresh) continue;
    const auto& [a, ea] = it->second;
    if (ea.has_value() != e.has_value() || (e && !same_spec(*ea, *e))) {
      return fmt::format("'{}' and '{}' get different configs but vLLM fuses them into '{}'", a->prefix, l->prefix, fused);
    }
  }
  return {};
}

// vLLM runs a layer's routed experts as one FusedMoE module (Codec::expert_bits).
constexpr const char* kVllmMoe = "vllm quantization/gptq_marlin.py GPTQMarlinMoEMethod, quantization/moe_wna16.py is_moe_wna16_compatible";
std::string moe_bits_disagree(const Model& m, const Codec& c) {
  for (const LinearDesc* l : m.linears()) {
    if (l->expert < 0) continue;
    const auto e = c.expected(m.config().quantization_config, *l, m.dir() / "config.json");
    if (e && std::find(c.expert_bits.begin(), c.expert_bits.end(), e->bits) == c.expert_bits.end()) return fmt::format("'{}' is {}-bit", l->prefix, e->bits);
  }
  return {};
}

void check_gptq(const Model& m, Checker& k) {
  const auto& qc = m.config().quantization_config;
  const fs::path where = m.dir() / "config.json";
  const std::int64_t bits = config_int(qc, "bits", 4, where);
  const bool bits_ok = bits == 2 || bits == 3 || bits == 4 || bits == 8;
  const std::string b = fmt::format("bits {}", bits);
  k.add("transformers", "bits in {2, 3, 4, 8}", bits_ok, b, kTfGptq);
  k.add("vllm", "bits in {2, 3, 4, 8}", bits_ok, b, kVllmGptq);
  k.add("gptqmodel", "bits in {2, 3, 4, 8}", bits_ok, b, kGptqModel);
  const bool has_damp = qc.contains("damp_percent") && qc["damp_percent"].is_number();
  const double damp = has_damp ? qc["damp_percent"].get<double>() : 0.01;
  const bool damp_ok = damp > 0 && damp < 1;
  k.add("transformers", "0 < damp_percent < 1", damp_ok, fmt::format("damp_percent {}", damp), kTfGptq);
  k.add("gptqmodel", "0 < damp_percent < 1", damp_ok, fmt::format("damp_percent {}", damp), kGptqModel);
  const std::int64_t g = config_int(qc, "group_size", 128, where);
  k.all({"transformers", "vllm", "gptqmodel"}, "group_size is -1 or positive", g == -1 || g > 0, fmt::format("group_size {}", g), kTfGptq);
  const std::string cf = qc.value("checkpoint_format", std::string("gptq"));
  k.add("vllm", "checkpoint_format gptq (v1)", cf == "gptq", "checkpoint_format " + cf, kVllmGptq);
  const bool dynamic = qc.contains("dynamic") && qc["dynamic"].is_object() && !qc["dynamic"].empty();
  k.add("transformers", "no per-module `dynamic` (transformers and optimum ignore it)", !dynamic,
        dynamic ? "dynamic has " + std::to_string(qc["dynamic"].size()) + " entries: transformers would load every module with the top-level spec"
                : "none",
        kTfGptq);
  const std::string fused = fused_disagree(m, codec(Format::gptq));
  k.add("vllm", "fused siblings (qkv_proj, gate_up_proj, a layer's experts) share one config", fused.empty(), fused.empty() ? "yes" : fused, kVllmDynamic);
  if (m.config().is_moe()) {
    const std::string moe = moe_bits_disagree(m, codec(Format::gptq));
    k.add("vllm", "MoE experts are 4- or 8-bit", moe.empty(), moe.empty() ? "yes" : moe, kVllmMoe);
  }
  const std::string t = tensors_disagree(m);
  k.all({"vllm", "transformers", "gptqmodel", "quant"}, "tensors match quantization_config", t.empty(), t.empty() ? "yes" : t, kVllmGptq);
}

void check_awq(const Model& m, Checker& k) {
  const auto& qc = m.config().quantization_config;
  const fs::path where = m.dir() / "config.json";
  const std::int64_t bits = config_int(qc, qc.contains("w_bit") ? "w_bit" : "bits", 4, where);
  k.add("autoawq", "4-bit", bits == 4, fmt::format("bits {}", bits), kAutoAwq);
  k.add("vllm", "4-bit", bits == 4, fmt::format("bits {}", bits), kVllmAwq);
  const std::string version = qc.value("version", std::string("gemm"));
  k.all({"autoawq", "vllm"}, "version gemm", version == "gemm" || version == "GEMM", "version " + version, kAutoAwq);
  const LinearDesc& head = m.layout().lm_head;
  const bool head_packed = !m.layout().tied && m.storage(head) == LinearStorage::packed;
  k.add("autoawq", "lm_head not quantized", !head_packed, head_packed ? "lm_head is stored packed" : "yes", kAutoAwq);
  // A kept module must be kept in every block: modules_to_not_convert names block-relative modules.
  std::map<std::string, std::pair<int, int>> kept;
  for (const LinearDesc* l : m.linears()) {
    if (l->layer < 0) continue;
    auto& [n_kept, n] = kept[block_relative_name(*l)];
    n_kept += m.storage(*l) == LinearStorage::dense;
    ++n;
  }
  std::string partial;
  for (const auto& [name, c] : kept) {
    if (c.first > 0 && c.first < c.second) partial = fmt::format("'{}' is kept in {} of {} layers", name, c.first, c.second);
  }
  k.add("autoawq", "kept modules are kept in every layer", partial.empty(), partial.empty() ? "yes" : partial, kAutoAwq);
  const std::string fused = fused_disagree(m, codec(Format::awq));
  k.add("vllm", "fused siblings (qkv_proj, gate_up_proj, a layer's experts) share one config", fused.empty(), fused.empty() ? "yes" : fused, kVllmAwq);
  const std::string t = tensors_disagree(m);
  k.all({"vllm", "autoawq", "transformers", "quant"}, "tensors match quantization_config", t.empty(), t.empty() ? "yes" : t, kVllmAwq);
}

// compressed-tensors pack-quantized as vLLM selects a scheme for it (weight-only int, 4 or 8
// bits, group or channel strategy: CompressedTensorsWNA16) and matches layers to groups.
// The scheme vLLM's CompressedTensorsConfig._get_scheme_from_parts picks for a config group of a
// checkpoint in `format`, or empty with `why` set.
std::string vllm_ct_scheme(const nlohmann::json& g, const std::string& format, std::string& why) {
  const nlohmann::json w = g.is_object() ? g.value("weights", nlohmann::json()) : nlohmann::json();
  const nlohmann::json a = g.is_object() ? g.value("input_activations", nlohmann::json()) : nlohmann::json();
  if (!w.is_object()) return why = "no weights scheme", std::string();
  const int bits = w.value("num_bits", 0);
  const std::string type = w.value("type", std::string()), strategy = w.value("strategy", std::string());
  const bool sym = w.value("symmetric", false), wdyn = w.value("dynamic", false);
  const bool tensor_or_channel = strategy == "tensor" || strategy == "channel";
  const bool act_format = format == "naive-quantized" || format == "int-quantized" || format == "float-quantized";
  // Asymmetric WNA16 (weight_zero_point) loads since vLLM added zero points to
  // CompressedTensorsWNA16; older releases required symmetric here.
  if (a.is_null() && type == "int" && !wdyn && (strategy == "group" || strategy == "channel") && format == "pack-quantized" &&
      (bits == 4 || bits == 8)) {
    return "CompressedTensorsWNA16";
  }
  if (act_format && type == "float" && sym && !wdyn && tensor_or_channel) {
    if (a.is_null()) return "CompressedTensorsW8A16Fp8";
    if (a.is_object() && a.value("type", std::string()) == "float" &&
        (a.value("dynamic", false) || (a.value("symmetric", false) && a.value("strategy", std::string()) == "tensor"))) {
      return "CompressedTensorsW8A8Fp8";
    }
  }
  if (act_format && type == "int" && bits == 8 && sym && !wdyn && tensor_or_channel && a.is_object() && a.value("num_bits", 0) == 8) {
    const std::string as = a.value("strategy", std::string());
    const bool adyn = a.value("dynamic", false);
    if ((as == "token" && adyn) || (as == "tensor" && !adyn)) return "CompressedTensorsW8A8Int8";
  }
  why = fmt::format("{} {}-bit {} {}, strategy {}, input activations {} in format {}", type, bits, sym ? "symmetric" : "asymmetric",
                    wdyn ? "dynamic" : "static", strategy, a.is_null() ? "none" : a.dump(), format);
  return {};
}

void check_compressed_tensors(const Model& m, Checker& k) {
  const auto& qc = m.config().quantization_config;
  const std::string format = qc.value("format", std::string());
  const bool known = format == "pack-quantized" || format == "int-quantized" || format == "float-quantized";
  k.all({"vllm", "transformers"}, "format pack-quantized, int-quantized or float-quantized", known, "format " + format, kVllmCt);
  const std::string status = qc.value("quantization_status", std::string());
  k.add("transformers", "quantization_status compressed", status == "compressed", "quantization_status " + status, kTfCt);
  std::string bad;
  std::set<std::string> schemes;
  if (qc.contains("config_groups") && qc["config_groups"].is_object()) {
    for (const auto& [name, g] : qc["config_groups"].items()) {
      std::string why;
      const std::string scheme = vllm_ct_scheme(g, g.is_object() ? g.value("format", format) : format, why);
      if (scheme.empty()) bad = name + ": " + why;
      else schemes.insert(scheme);
    }
  } else {
    bad = "no config_groups";
  }
  k.add("vllm", "every group has a vLLM scheme (WNA16, W8A8Int8, W8A8Fp8, W8A16Fp8)", bad.empty(),
        bad.empty() ? fmt::format("{}", fmt::join(schemes, ", ")) : bad, kVllmCt);
  const std::string fused = fused_disagree(m, codec(Format::compressed_tensors));
  k.add("vllm", "fused siblings (qkv_proj, gate_up_proj, a layer's experts) match one group", fused.empty(), fused.empty() ? "yes" : fused, kVllmCtMatch);
  const std::string t = tensors_disagree(m);
  k.all({"vllm", "transformers", "quant"}, "tensors match quantization_config", t.empty(), t.empty() ? "yes" : t, kVllmCt);
}

void check_gguf(const fs::path& path, Checker& k) {
  std::string why;
  try {
    const gguf::File f = gguf::File::open(path);
    const gguf::Value* arch = f.find("general.architecture");
    if (!arch || arch->s.empty()) why = "no general.architecture";
  } catch (const Error& e) {
    why = e.what();
  }
  k.add("llamacpp", "a valid GGUF v3 file with general.architecture (quant's reader, as strict as gguf.cpp)", why.empty(),
        why.empty() ? "yes" : why, "llama.cpp ggml/src/gguf.cpp gguf_init_from_file_impl");
  for (const auto& l : k.rep.loaders) {
    if (l != "llamacpp") k.add(l, "reads GGUF files", false, "a GGUF file is for llama.cpp; check the HF checkpoint instead", "-");
  }
}

}  // namespace

CheckReport check_checkpoint(const fs::path& path, std::vector<std::string> loaders) {
  for (const auto& l : loaders) {
    if (std::find(kLoaders.begin(), kLoaders.end(), l) == kLoaders.end()) {
      fail<UsageError>("unknown loader '{}' ({})", l, fmt::join(kLoaders, ", "));
    }
  }
  CheckReport rep;
  Checker k{rep};
  if (fs::is_regular_file(path) && path.extension() == ".gguf") {
    rep.format = "gguf";
    rep.loaders = loaders.empty() ? std::vector<std::string>{"llamacpp"} : loaders;
    check_gguf(path, k);
    return rep;
  }
  if (!fs::is_regular_file(path / "config.json")) fail("{}: neither a checkpoint directory (config.json) nor a .gguf file", path.string());
  const Model m = Model::open(path, &decode_packed_linear);
  const auto& qc = m.config().quantization_config;
  const Codec* c = codec_for_config(qc);
  const bool quantized = qc.is_object() && qc.contains("quant_method");
  rep.format = !quantized ? "dense" : c ? c->name : qc.value("quant_method", std::string("?"));
  if (rep.format == "gptq") rep.loaders = {"vllm", "transformers", "gptqmodel"};
  else if (rep.format == "awq") rep.loaders = {"vllm", "autoawq", "transformers"};
  else if (rep.format == "lut") rep.loaders = {"quant"};
  else rep.loaders = {"transformers", "vllm"};
  // By default only the loaders that have a class for this family (a qwen3 AWQ checkpoint is for
  // vLLM and transformers; AutoAWQ has no Qwen3 class); --for LOADER checks it regardless.
  std::erase_if(rep.loaders, [&](const std::string& l) { return !has_model_class(l, m.config().model_type); });
  if (!loaders.empty()) rep.loaders = loaders;
  check_model_type(m, k);
  if (rep.format == "gptq") check_gptq(m, k);
  else if (rep.format == "awq") check_awq(m, k);
  else if (rep.format == "compressed-tensors") check_compressed_tensors(m, k);
  else if (rep.format == "lut") {
    const std::string t = tensors_disagree(m);
    k.add("quant", "tensors match quantization_config", t.empty(), t.empty() ? "yes" : t, "quant src/formats/lut.cpp");
    for (const auto& l : rep.loaders) {
      if (l != "quant") {
        k.add(l, "knows the format", false,
              "quant-lut is quant's own format (vLLM removed squeezellm; transformers would load random weights); "
              "evaluate with quant eval or write --format dense", "-");
      }
    }
  } else if (rep.format == "dense") {
    for (const auto& l : rep.loaders) {
      k.add(l, "a float checkpoint (no quantization_config)", l != "llamacpp", l == "llamacpp" ? "convert it with quant gguf" : "yes", "-");
    }
  } else {
    for (const auto& l : rep.loaders) k.add(l, "a quant_method quant knows", false, "quant_method '" + rep.format + "'", "-");
  }
  if (rep.rules.empty()) {
    for (const auto& l : rep.loaders) k.add(l, "reads this format", false, "no rules: " + l + " does not read " + rep.format, "-");
  }
  return rep;
}

}  // namespace quant::formats
