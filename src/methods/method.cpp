#include "quant/methods/method.h"

#include "quant/core/error.h"
#include "quant/model/calibration.h"

namespace quant {

LayerTransform Method::transform_layer(const LayerContext& context, LayerWeights&, std::map<CapturePoint, InputStats>&) const {
  fail<Error>("method {} has no layer transform (layer {})", traits().name, context.layer.index);
}

InputStats measure_inputs(Statistic statistic, const std::vector<Mat>& xs, std::int64_t hessian_block) {
  InputStats s;
  if (statistic == Statistic::hessian) s.hessian = hessian(xs, hessian_block);
  if (statistic == Statistic::mean_square) s.mean_square = mean_square_inputs(xs);
  return s;
}

}  // namespace quant
