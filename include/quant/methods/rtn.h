// RTN: round-to-nearest with min/max ranges (optionally MSE-searched clipping, QuantSpec::mse),
// one linear at a time straight from the checkpoint. No calibration.
#pragma once

#include "quant/methods/method.h"

namespace quant {

class RtnMethod : public Method {
 public:
  RtnMethod();
  const MethodTraits& traits() const override { return traits_; }
  // GPTQ-format loaders read these keys; RTN is GPTQ without error compensation.
  nlohmann::json config() const override;
  QuantizedLinear quantize(const LinearInput& input) const override;

 private:
  MethodTraits traits_;
};

}  // namespace quant
