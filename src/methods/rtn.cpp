#include "quant/methods/rtn.h"

namespace quant {

RtnMethod::RtnMethod() {
  traits_.name = "rtn";
  traits_.statistic = Statistic::none;
}

nlohmann::json RtnMethod::config() const { return {{"damp_percent", 0.0}, {"true_sequential", false}}; }

QuantizedLinear RtnMethod::quantize(const LinearInput& in) const { return {quantize_rtn(in.weight, in.spec), Mat(), nlohmann::json()}; }

}  // namespace quant
