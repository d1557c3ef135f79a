#include "quant/methods/rtn.h"

namespace quant {

RtnMethod::RtnMethod() {
  traits_.name = "rtn";
  traits_.fp8_weights = true;
  traits_.statistic = Statistic::none;
}

// No damp_percent: loaders require 0 < damp_percent < 1 (transformers GPTQConfig.post_init), and
// the codec's default (0.01) is what GPTQ would use; RTN has no Hessian to damp.
nlohmann::json RtnMethod::config() const { return {{"true_sequential", false}}; }

QuantizedLinear RtnMethod::quantize(const LinearInput& in) const { return {quantize_rtn(in.weight, in.spec), Mat(), nlohmann::json()}; }

}  // namespace quant
