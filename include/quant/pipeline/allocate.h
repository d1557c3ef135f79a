// Mixed precision by sensitivity (`--target-bpw`): per-linear bit widths that minimise the
// summed quantization loss under a bits-per-weight budget, in the spirit of HAQ and EXL2.
//
// Sensitivity of linear W at b bits is the output error of round-to-nearest quantization under
// its inputs' Hessian, tr(ΔW H ΔWᵀ) with ΔW = W − Q_b(W) and H = 2/n Σ x xᵀ from calibration
// activations of the float model (H = I, the plain squared error, without calibration). The
// allocation is greedy on the loss-versus-bits curves: start every linear at the fewest bits,
// then repeatedly raise the one with the largest loss decrease per added bit that still fits
// the budget, until none fits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/model/model.h"
#include "quant/pipeline/policy.h"

namespace quant {

struct BitChoice {
  std::string linear;          // prefix, e.g. "model.layers.0.mlp.down_proj", or the fused layer's
  std::vector<std::string> members;  // the linears sharing this choice (fused siblings: q/k/v, gate/up)
  std::int64_t n_params = 0;
  std::vector<int> bits;       // the candidates tried, ascending
  std::vector<double> loss;    // sensitivity at each candidate
  std::vector<double> bpw;     // storage cost at each candidate (codes + scales and zeros)
  int chosen = 0;              // index into bits
};

struct Allocation {
  double target_bpw = 0;
  double bpw = 0;  // achieved, over the allocated linears
  std::vector<BitChoice> linears;
  // One rule per linear ("^name$=bits:B"), to put in front of the policy's rules.
  std::vector<Rule> rules() const;
};

// How a linear's sensitivity at b bits is measured.
enum class Sensitivity {
  hessian,  // tr(ΔW H ΔWᵀ) / tr(W H Wᵀ) × params: the relative output error, one layer at a time
  kl,       // the mean KL divergence of the next-token distributions from the float model's on (up to 16 of) the calibration
            // windows with only that linear quantized: end to end, slower, whole model in memory
};
Sensitivity parse_sensitivity(const std::string& name);

// Allocates bits among the linears (fused siblings — q/k/v, gate/up — as one unit, since the
// loaders that fuse them need one config per fused layer) `policy` quantizes (each keeps its policy group size and
// symmetry). `samples` may be empty (then H = I). Throws UsageError when the budget is below
// every linear at the fewest candidate bits. `expert_bits`, when not empty: the only widths a
// layer's routed experts (one group, as vLLM's FusedMoE) may get (GPTQ/AWQ formats: 4 or 8).
Allocation allocate_bits(const Model& model, const Policy& policy, double target_bpw, std::vector<int> candidates,
                         const std::vector<std::vector<std::int32_t>>& samples, Sensitivity kind = Sensitivity::hessian,
                         const std::vector<int>& expert_bits = {});

}  // namespace quant
