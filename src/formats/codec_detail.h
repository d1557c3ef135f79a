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

// Appends `q[key] = value` for every entry of `extra` (method settings into the config).
void merge_into(nlohmann::json& q, const nlohmann::json& extra);

}  // namespace quant::formats
