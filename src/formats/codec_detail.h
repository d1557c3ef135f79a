// Helpers shared by the codecs in src/formats/ (not part of the public interface).
#pragma once

#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/core/strings.h"

namespace quant::formats {

// Each column o of the result is the bit stream of row o's codes, padded to whole words:
// [ceil(in·bits/32), out] (gptq qweight, lut qweight).
std::vector<std::int32_t> pack_code_columns(const QuantizedMatrix& m);
std::vector<std::uint8_t> unpack_code_columns(const std::vector<std::int32_t>& qweight, std::int64_t out, std::int64_t in, int bits);

// An unpacked matrix's shape: `n_groups` groups of ceil(in / n_groups) inputs; codes, g_idx and
// parameters are left to the format's unpacker.
inline QuantizedMatrix unpacked_shape(std::int64_t out, std::int64_t in, int bits, std::int64_t n_groups) {
  QuantizedMatrix m;
  m.bits = bits;
  m.out = out;
  m.in = in;
  m.n_groups = n_groups;
  m.group_size = (in + n_groups - 1) / n_groups;
  return m;
}

// A tensor of the checkpoint read as T, refused unless it has exactly `dtype` and `shape`.
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

inline std::int64_t dim(const Model& model, const std::string& name, std::size_t axis) {
  const TensorInfo& t = model.store().get(name);
  if (t.shape.size() != 2) fail("{}: tensor '{}' must be 2-D", model.store().file_of(name).string(), name);
  return t.shape[axis];
}


// Throws InputError when any |v| exceeds float16's range, which the format stores `what` in.
void check_f16_range(std::span<const float> v, const char* what, const LinearDesc& l, const char* format);

// Why an affine format (gptq, awq) cannot hold what the method produces, or empty.
std::string refuses_affine(const MethodOutput& output, const char* format);

// Typed fields of quantization_config (InputError naming config.json and the field otherwise).
std::int64_t config_int(const nlohmann::json& qc, const char* key, std::int64_t fallback, const fs::path& where);
bool config_bool(const nlohmann::json& qc, const char* key, bool fallback, const fs::path& where);
// Python's re.match (anchored at the start only), as GPTQModel and vLLM match `dynamic` keys.
bool re_match(const std::string& pattern, const std::string& text, const fs::path& where);
// GPTQModel-style `dynamic` over `base`: "-:REGEX" keeps the linear in float (nullopt),
// "+:REGEX" (or a bare REGEX) overrides bits, group_size and sym; the first match decides.
std::optional<QuantSpec> apply_dynamic(const nlohmann::json& qc, const LinearDesc& l, QuantSpec base, const fs::path& where);
// The quantized matrix's parameters against the spec the config gives it: bits, groups, and for
// symmetric specs zeros at the middle; InputError naming the tensor and the field.
void check_matches_config(const QuantizedMatrix& m, const QuantSpec& expected, const LinearDesc& l, const fs::path& where,
                          bool check_sym);

// compressed-tensors: the activation quantization the config declares for a linear (a
// Model::ActQuantReader), and the spec it gives a linear whatever its format (int-/float-quantized
// included; nullopt: kept in float).
ActInput compressed_tensors_act_quant(const Model& model, const LinearDesc& linear);
std::optional<QuantSpec> compressed_tensors_spec(const nlohmann::json& qc, const LinearDesc& linear, const fs::path& where);

// Appends `q[key] = value` for every entry of `extra` (method settings into the config).
void merge_into(nlohmann::json& q, const nlohmann::json& extra);

}  // namespace quant::formats
