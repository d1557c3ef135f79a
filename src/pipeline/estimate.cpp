#include "quant/pipeline/estimate.h"

#include <algorithm>
#include <cmath>

#include "quant/core/error.h"

namespace quant {

namespace {

// Fitted on bench/ runs at 2 threads (docs/cluster.md has the figures they reproduce).
constexpr double kBaseBytes = 30e6;        // the process, its libraries and small buffers
constexpr double kGptqFlops = 106e9;       // GPTQ on the 1.1B-shaped model: 662 s for 128×128 tokens
constexpr double kAwqFlops = 140e9;        // AWQ on the 1.1B-shaped model: 814 s for 16×128 tokens
constexpr double kKmeansPerParam = 4.3e-8;  // k-means' exact 1-D solve: seconds per weight · k · log2(row), wiki-llama-5m
constexpr double kFixedSeconds = 0.3;      // start-up, reading the model, writing the output
constexpr double kRtnSecondsPerParam = 1.5e-8;
constexpr double kGgufSecondsPerParam = 3.2e-8;    // q4_k_m on the 1.1B-shaped model: 35 s
constexpr double kGgufIqSecondsPerParam = 9.8e-8;  // iq4_xs: 107 s

}  // namespace

nlohmann::json JobEstimate::to_json() const { return {{"peak_rss_bytes", peak_rss_bytes}, {"seconds", seconds}}; }

JobEstimate estimate_job(const ModelConfig& c, std::int64_t n_params, const std::string& method, std::int64_t calib_tokens,
                         std::int64_t seqlen, int threads, bool iq_type) {
  const double H = static_cast<double>(c.hidden_size), I = static_cast<double>(c.intermediate_size);
  const double head_dim = static_cast<double>(c.head_dim > 0 ? c.head_dim : c.hidden_size / std::max<std::int64_t>(1, c.n_heads));
  const double q = static_cast<double>(c.n_heads) * head_dim, kv = static_cast<double>(c.n_kv_heads) * head_dim;
  const double L = static_cast<double>(c.n_layers), V = static_cast<double>(c.vocab_size);
  const double T = static_cast<double>(std::max<std::int64_t>(0, calib_tokens)), S = static_cast<double>(std::max<std::int64_t>(1, seqlen));
  // A sparse layer holds every expert (and the shared one): n_experts · expert_ffn rows.
  const double moe_rows = c.is_moe() ? static_cast<double>(c.moe.n_experts * c.moe.expert_ffn + c.moe.shared_ffn) : 0;
  const double p_attn = H * q + 2 * H * kv + q * H, p_mlp = 3 * H * std::max(I, moe_rows), p_layer = p_attn + p_mlp;
  const double largest = std::max({V * H, H * I, H * q});  // the largest single tensor, in parameters
  const double speed = 2.0 / std::max(1, threads);
  JobEstimate e;
  if (method == "rtn" || method == "gguf") {
    // Streaming one tensor at a time: its float32 copy, the next one being read, the output codes.
    e.peak_rss_bytes = static_cast<std::uint64_t>(kBaseBytes + 6 * largest);
    e.seconds = kFixedSeconds * speed + static_cast<double>(n_params) * speed *
                (method == "rtn" ? kRtnSecondsPerParam : iq_type ? kGgufIqSecondsPerParam : kGgufSecondsPerParam);
    return e;
  }
  if (method != "gptq" && method != "awq" && method != "kmeans") fail<UsageError>("estimate_job: unknown method '{}'", method);
  // Layer-sequential: the calibration hidden states entering and leaving the layer and the
  // captures its linears need (4·T·(4H + 2I) bytes), the layer's weights as float32 with their
  // quantized copies (12·P bytes), the statistics (GPTQ/k-means: one float64 Hessian per distinct
  // input; AWQ: the float block outputs).
  const double hessians = 8 * (3 * H * H + I * I);
  const double stats = method == "awq" ? 4 * T * H * 4 : hessians;
  e.peak_rss_bytes = static_cast<std::uint64_t>(kBaseBytes + 4 * T * (4 * H + 2 * I) + 12 * p_layer + stats + 4 * V * H);
  const double forward = 2 * T * p_layer + 4 * T * S * q;  // the linears and attention's scores and sums
  double flops = 0, rate = kGptqFlops, solve_seconds = 0;
  if (method == "gptq") {
    const double hessian = 2 * T * (H * H + q * q + H * H + I * I);
    const double solve = 2 * ((q + 2 * kv) * H * H + H * q * q + 2 * I * H * H + H * I * I);
    flops = L * (forward + hessian + solve);
  } else if (method == "kmeans") {
    // The Hessian diagonal's statistics, then O(k·n log n) per row of n weights (k = 16 at 4 bits).
    flops = T > 0 ? L * (forward + 2 * T * (2 * H + q + I)) : 0;
    const double row_work = (p_attn + 2 * H * I) * std::log2(std::max(2.0, H)) + H * I * std::log2(std::max(2.0, I));
    solve_seconds = kKmeansPerParam * 16 * L * row_work;
  } else {
    // 20 grid points and the float reference per mapping: the attention block (q/k/v scales), the
    // MLP (gate/up), o_proj alone (v→o) and down_proj alone (up→down).
    const double per_candidate = forward + 2 * T * (q * H + H * I);
    flops = L * (21 * per_candidate + 2 * forward);
    rate = kAwqFlops;
  }
  e.seconds = (kFixedSeconds + flops / rate + solve_seconds) * speed;
  return e;
}

}  // namespace quant
