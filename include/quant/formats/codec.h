// One codec per checkpoint format, registered in one table (like ggml's type traits): its name,
// which specs and methods it can hold and why not, the tensors a linear becomes, how they are
// written and read back, and its quantization_config block. Adding a format is one source file
// in src/formats/ plus one row in codecs(). Byte layouts: docs/formats.md.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "quant/core/quantizer.h"
#include "quant/io/safetensors.h"
#include "quant/model/model.h"

namespace quant::formats {

enum class Format { gptq, awq, dense, lut, compressed_tensors };

// What a method produces, as far as a format cares (filled from the method's traits).
struct MethodOutput {
  std::string method;          // for messages and the config's meta
  bool codebooks = false;      // non-uniform codes with per-row codebooks
  bool act_order = false;      // columns permuted: needs a stored g_idx
  bool float_weights = false;  // transformed float weights, nothing quantized
};

// One quantized linear to write.
struct LinearToWrite {
  const LinearDesc& desc;
  const QuantizedMatrix& m;
  DType weight_dtype;           // the source checkpoint's dtype of this weight
  std::span<const float> bias;  // empty: the linear has no bias
  bool act_order = false;       // the method permuted columns (GPTQ desc_act): g_idx is part of the scheme
  ActQuant act = ActQuant::none;  // the planned activation quantization (selects compressed-tensors int-quantized)
  float input_scale = 0.0f;       // a static activation scheme's calibrated scale (written as `input_scale`); 0: none
};

// What quantization_config is built from.
struct ConfigInput {
  QuantSpec base;                          // the common spec
  bool lm_head = false;                    // lm_head is quantized
  nlohmann::json dynamic = nlohmann::json::object();  // GPTQModel-style per-module overrides
  std::vector<std::string> not_converted;  // decoder linears kept in the source dtype
  // The same as block-relative names and their fused layers ("self_attn.q_proj",
  // "self_attn.qkv_proj"), for loaders that match inside every block (AutoAWQ, vLLM's awq).
  std::vector<std::string> not_converted_blocks;
  std::string method;
  nlohmann::json method_config = nlohmann::json::object();
};

// A linear as the plan decided it, for the codecs' whole-plan loader rules.
struct PlannedLinear {
  const LinearDesc* desc = nullptr;
  bool quantize = false;
  QuantSpec spec;
};

struct Codec {
  Format format;
  const char* name;
  const char* quant_method;  // quantization_config.quant_method that marks it; nullptr: none (dense)
  std::vector<std::string> suffixes;  // the tensors a linear `P` becomes: P + suffix
  std::vector<int> bits;              // the bit widths its loaders accept (empty: any of 2..8)
  // Loaders fuse q/k/v (and gate/up) into one layer that needs one config for all its parts
  // (vLLM's packed_modules_mapping): the plan refuses siblings with different specs.
  bool fused_share_spec = false;
  // Per-module specs can be written (GPTQModel's `dynamic`); false: one spec for every linear.
  bool per_module_specs = false;
  // Empty when an [out, in] matrix quantized with `spec` fits, else why not.
  std::string (*unsupported)(std::int64_t out, std::int64_t in, const QuantSpec& spec);
  // Empty when the format can hold what the method produces, else why not.
  std::string (*refuses)(const MethodOutput& output);
  // Writes the linear's tensors (and its bias); throws InputError naming the tensor when a
  // value cannot be represented (e.g. a scale beyond float16).
  void (*write)(SafetensorsWriter& writer, const LinearToWrite& linear);
  // Reads a linear stored in this format back to float [out, in] (before dtype rounding); null
  // for dense (read as a plain weight).
  Mat (*read)(const Model& model, const LinearDesc& linear);
  // quantization_config; null for dense (which has none).
  nlohmann::json (*config)(const ConfigInput& input);
  // Loader rules over the whole plan beyond the flags above (null: none); empty when fine.
  std::string (*check_plan)(const std::vector<PlannedLinear>& linears) = nullptr;
  // The spec a checkpoint's quantization_config gives this linear as the loaders read it
  // (top-level fields, `dynamic` overrides, modules_to_not_convert, lm_head); nullopt when the
  // loaders keep it in float. Throws InputError naming config.json and the field when a field
  // has the wrong type. Null for dense.
  std::optional<QuantSpec> (*expected)(const nlohmann::json& quantization_config, const LinearDesc& linear,
                                       const fs::path& config_path) = nullptr;
  // The bit widths a layer's routed experts may have (the loaders' MoE kernels); empty: any of `bits`.
  std::vector<int> expert_bits = {};
};

// Checks every linear's storage against the quantization_config as loaders read it: a linear
// the config quantizes must be stored packed, one it keeps must be a float weight. InputError
// names the file, the tensor and the config field.
void verify_against_config(const Model& model);

// Why the loaders of `codec` cannot load a checkpoint planned like `linears` (fused siblings
// with different specs, per-module specs where the format has none, the codec's own rules), or
// empty. The message names the linears, the loader rule and how to fix it.
std::string plan_refusal(const Codec& codec, const std::vector<PlannedLinear>& linears);
bool same_spec(const QuantSpec& a, const QuantSpec& b);  // bits, group size, symmetry
// The fast kernels whose constraints every quantized linear meets (vLLM gptq_marlin: symmetric
// 4/8-bit, group -1/32/64/128; awq_marlin: 4-bit, group -1/32/64/128; exllamav2: 4-bit gptq).
std::vector<std::string> fast_kernels(Format format, const std::vector<PlannedLinear>& linears);

const std::vector<Codec>& codecs();
const Codec& codec(Format format);
Format parse_format(const std::string& name);  // throws UsageError listing the formats
std::string format_name(Format format);
// The codec whose quant_method a checkpoint's quantization_config names, or null.
const Codec* codec_for_config(const nlohmann::json& quantization_config);
// Every tensor suffix a linear can have in any format (and ".weight", ".bias").
std::vector<std::string> all_linear_suffixes();

// Empty when `format` can store an [out, in] matrix quantized with `spec`, else why not.
std::string unsupported_reason(Format format, std::int64_t out, std::int64_t in, const QuantSpec& spec);

// Dequantizes a packed linear ([out, in] float, rounded to the model's torch_dtype as kernels
// compute) from the model's checkpoint, by the codec its quantization_config names.
Mat decode_packed_linear(const Model& model, const LinearDesc& linear);
// Model::open with the packed-format reader attached, so packed checkpoints load as float.
// A GGUF file (open_gguf_model) only where `allow_gguf`; elsewhere it is refused with a message
// naming the commands that read GGUF.
Model open_model(const fs::path& dir, bool allow_gguf = false);

}  // namespace quant::formats
