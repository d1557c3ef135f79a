// The codec table and what is shared by the codecs.
#include <cmath>

#include "codec_detail.h"
#include "quant/core/dtype.h"

namespace quant::formats {

Codec gptq_codec();
Codec awq_codec();
Codec dense_codec();
Codec lut_codec();

const std::vector<Codec>& codecs() {
  static const std::vector<Codec> table = {gptq_codec(), awq_codec(), dense_codec(), lut_codec()};
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
  for (const Codec& c : codecs()) {
    if (c.quant_method && method == c.quant_method) return &c;
  }
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

Model open_model(const fs::path& dir) { return Model::open(dir, &decode_packed_linear); }

}  // namespace quant::formats
