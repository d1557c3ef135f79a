// Peak memory and wall-time estimates of a quantization job, from the model's shapes, the method
// and the calibration size, so that batch users can size scheduler requests (`quant run
// --dry-run`, Slurm --mem/--time, Kubernetes resources; docs/cluster.md). The constants come from
// bench/methods.sh and bench/gguf_export.sh on a 2-core x86-64 machine (docs/performance.md);
// expect ±50 %, and add a margin when requesting resources.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "quant/model/config.h"

namespace quant {

struct JobEstimate {
  std::uint64_t peak_rss_bytes = 0;
  double seconds = 0;
  nlohmann::json to_json() const;
};

// `method`: rtn, gptq, awq, kmeans or gguf (for gguf, `iq_type` says the type is an i-quant,
// several times slower to search). `calib_tokens`: nsamples · seqlen (0 for rtn/gguf), `seqlen`
// the window length; `threads` the OpenMP threads (time scales as 2 / threads, bench's setting).
JobEstimate estimate_job(const ModelConfig& config, std::int64_t n_params, const std::string& method, std::int64_t calib_tokens,
                         std::int64_t seqlen, int threads, bool iq_type = false);

}  // namespace quant
