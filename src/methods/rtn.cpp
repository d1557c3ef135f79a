#include "quant/methods/rtn.h"

#include "quant/weights.h"

namespace quant {

QuantizeReport rtn_quantize_model(const Model& model, const Policy& policy, const RunOptions& options,
                                  const StepProgress& progress) {
  OutputSession session(model, policy, options);
  const std::int64_t total = session.n_to_quantize();
  std::int64_t done = 0;
  for (const auto& p : session.plan()) {
    if (!p.quantize) continue;
    const Mat w = load_linear(model, *p.desc);
    const QuantizedMatrix q = quantize_rtn(w, p.spec);
    session.put_quantized(*p.desc, q, w);
    if (progress) progress(++done, total, p.desc->prefix);
  }
  return session.finish();
}

}  // namespace quant
