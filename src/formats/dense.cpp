// Dense ("fake-quant") checkpoints: the dequantized weights in the source dtype, loadable by
// anything; no quantization_config.
#include "codec_detail.h"
#include "quant/core/dtype.h"

namespace quant::formats {

namespace {

std::string dense_unsupported(std::int64_t, std::int64_t, const QuantSpec&) { return {}; }
std::string dense_refuses(const MethodOutput&) { return {}; }

void dense_write(SafetensorsWriter& w, const LinearToWrite& l) {
  const Mat deq = l.m.dequantize();
  const std::span<const float> values(deq.data(), static_cast<std::size_t>(deq.size()));
  // A float16 checkpoint stores the dequantized weights as float16.
  if (l.weight_dtype == DType::F16) check_f16_range(values, "dequantized weight", l.desc, "dense");
  w.add_f32(l.desc.weight_name(), l.weight_dtype, {l.m.out, l.m.in}, values);
  if (!l.bias.empty()) w.add_f32(l.desc.bias_name(), l.weight_dtype, {l.m.out}, l.bias);
}

}  // namespace

Codec dense_codec() { return {Format::dense, "dense", nullptr, {".weight"}, {}, false, true, dense_unsupported, dense_refuses, dense_write, nullptr, nullptr}; }

}  // namespace quant::formats
