// The plan of a quantizing run, built once by the library before any work: for every linear of
// the model, whether it is quantized, with which spec, and why — from the per-tensor policy, the
// output format's codec (what it can hold) and the method's traits. The output session, --dry-run
// and the automatic format choice all read this one plan.
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "quant/formats/codec.h"
#include "quant/methods/method.h"
#include "quant/model/model.h"
#include "quant/pipeline/policy.h"

namespace quant {

struct LinearPlan {
  const LinearDesc* desc = nullptr;
  bool quantize = false;
  QuantSpec spec;
  std::string reason;       // the policy's reason ("defaults", "rule '…'", "lm_head …")
  std::string unsupported;  // why the format cannot hold it (it is then kept), else empty
  // For reports: why the linear is kept, or which rule applied (empty for the defaults).
  std::string note() const;
};

struct Plan {
  formats::Format format = formats::Format::gptq;
  formats::MethodOutput output;
  std::vector<LinearPlan> linears;  // Model::linears() order

  const LinearPlan& at(const LinearDesc& linear) const;
  std::int64_t n_to_quantize() const;
  // Linears the policy quantizes but the format cannot hold (kept in the source dtype).
  std::vector<const LinearPlan*> unsupported() const;
  void add(LinearPlan p);  // appends, indexed by the linear's prefix

 private:
  std::unordered_map<std::string, std::size_t> index_;
};

// Plans every linear. Throws before any work when the format cannot hold what the method writes
// (UsageError), a linear to quantize is already packed, or a linear cannot be stored in the
// format (InputError naming the file and tensor) unless `skip_unsupported`, which keeps such
// linears in the source dtype.
Plan make_plan(const Model& model, const Policy& policy, const MethodTraits& method, formats::Format format,
               bool skip_unsupported);

// The plan for the first of `candidates` (in order of preference) that can hold the most
// linears; linears it cannot hold are kept (skip_unsupported).
Plan make_plan_best_format(const Model& model, const Policy& policy, const MethodTraits& method,
                           const std::vector<formats::Format>& candidates);

}  // namespace quant
