// The output side every method shares: streaming the plan's quantized linears (through their
// format's codec) and the unchanged tensors into a staged output directory, config.json /
// quantize_config.json, tokenizer files, the resume journal, and the summary.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "quant/formats/codec.h"
#include "quant/io/io.h"
#include "quant/model/model.h"
#include "quant/pipeline/plan.h"
#include "quant/core/quantizer.h"
#include "quant/io/safetensors.h"

namespace quant {

struct RunOptions {
  fs::path out;
  formats::Format format = formats::Format::gptq;  // what the plan is made for
  OutputPolicy output;            // what may be replaced (force) and the inputs never touched
  bool skip_unsupported = false;  // keep linears the format cannot hold in the source dtype
  std::uint64_t max_shard_bytes = 5'000'000'000;  // as transformers' default max_shard_size
  std::string method = "rtn";  // set from the method's traits by quantize_model
  // Layer-sequential methods journal each finished layer in `<out>.resume/` and, started again
  // with the same model, calibration and settings, continue after the last finished layer.
  // false: discard any journal and start afresh.
  bool resume = true;
  // The journal holds the hidden states after the last finished layer (N·T·hidden float32) and
  // every finished layer's output tensors: about 2·N·T·hidden·4 bytes plus the output's size.
  // When that estimate exceeds journal_limit (> 0), the run is not journaled (warned).
  std::uint64_t journal_limit = 0;
  // Recorded as `job_id` in quant_summary.json (quant run's jobs: their outputs are recognised
  // as complete when a retried shard meets them again). Empty: not recorded.
  std::string job_id;
  // Sparse (MoE) layers (docs/methods.md "Mixture of experts"): each expert's statistics come
  // from the calibration tokens the router sends it ("routed") or from every token ("all",
  // statistics only: the forward pass still routes); an expert with fewer than moe_min_tokens
  // routed tokens is quantized without statistics (RTN; k-means unweighted).
  std::string moe_calibration = "routed";
  std::int64_t moe_min_tokens = 16;
  nlohmann::json fingerprint_extra;  // method options not in method_config (part of the resume fingerprint)
  nlohmann::json method_config = nlohmann::json::object();  // merged into quantization_config
};

struct TensorReport {
  std::string name;
  bool quantized = false;
  std::string note;
  QuantSpec spec;
  std::int64_t n_params = 0;
  double sq_error = 0;   // Σ (w − ŵ)²
  double rel_error = 0;  // ‖w − ŵ‖ / ‖w‖
  double bpw = 0;        // code bits + per-group scale (16) and zero (bits) overhead
  nlohmann::json extra;  // method-specific figures (e.g. GPTQ loss)
};

struct QuantizeReport {
  std::string method;
  std::string format;
  fs::path output;
  std::vector<TensorReport> tensors;
  double seconds = 0;
  std::uint64_t peak_rss_bytes = 0;  // of this process so far (getrusage ru_maxrss)
  std::uint64_t bytes_in = 0;
  std::uint64_t bytes_out = 0;
  double bpw_quantized = 0;  // over quantized linears
  double bpw_linears = 0;    // over all decoder linears (kept ones at their source bits)
  std::int64_t n_quantized = 0;
  std::int64_t n_kept = 0;
  std::vector<std::string> kernels;  // fast kernels the output qualifies for (formats::fast_kernels)
  nlohmann::json to_json() const;
};

using StepProgress = std::function<void(std::int64_t done, std::int64_t total, const std::string& what)>;

class OutputSession {
 public:
  // Creates `<out>.partial/` for the plan. Throws before writing anything when the output
  // exists (unless force).
  OutputSession(const Model& source, const Plan& plan, RunOptions options);
  ~OutputSession();

  const Plan& plan() const { return plan_; }
  const RunOptions& options() const { return options_; }
  const LinearPlan& plan_for(const LinearDesc& linear) const { return plan_.at(linear); }
  std::int64_t n_to_quantize() const { return plan_.n_to_quantize(); }

  // Writes a quantized linear (and its bias: `bias` when given, else the source's) in the
  // session's format; `original` is the float weight the error is measured against.
  // `input_scale`: a static activation scheme's calibrated scale (0: none).
  void put_quantized(const LinearDesc& linear, const QuantizedMatrix& m, const Mat& original,
                     nlohmann::json extra = {}, const Vec* bias = nullptr, float input_scale = 0.0f);
  // Writes a float tensor that replaces the source's (e.g. an AWQ-rescaled norm) in the
  // source tensor's dtype.
  void put_float(const std::string& name, const float* data, std::vector<std::int64_t> shape);
  // A linear's float weight [out, in] (and bias) in the source dtype. Linears stored fused
  // (Phi-3) are held until every sibling has arrived, then written as the one fused tensor.
  void put_linear_float(const LinearDesc& linear, const Mat& w, const Vec& bias);

  // Resuming (layer-sequential methods). enable_resume fingerprints the model, the calibration
  // samples and the settings; resume() replays the journal of an earlier run with the same
  // fingerprint into the output (throwing UsageError, with the reason, when it differs) and
  // returns how many layers it holds, with `hidden` set to the hidden states after them.
  // checkpoint() journals the tensors written since the last one, and `hidden`, as layer
  // `layer`'s; finish() removes the journal.
  void enable_resume(const std::vector<std::vector<std::int32_t>>& samples);
  int resume(std::vector<Mat>& hidden);
  void checkpoint(int layer, const std::vector<Mat>& hidden);

  // Writes every tensor not yet written from the source, the configs and tokenizer files,
  // quant_summary.json, and renames the directory into place.
  QuantizeReport finish();

 private:
  void put_source(const std::string& name);
  nlohmann::json quantization_config() const;

  const Model& source_;
  RunOptions options_;
  Plan plan_;
  std::unique_ptr<StagedDir> staged_;
  std::unique_ptr<SafetensorsWriter> writer_;
  std::set<std::string> written_;
  std::vector<TensorReport> reports_;
  std::chrono::steady_clock::time_point start_;
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> data;
  };
  fs::path resume_dir_;  // empty: not journaling
  nlohmann::json fingerprint_;
  nlohmann::json files_ = nlohmann::json::object();  // journal file → SHA-256
  std::vector<Pending> pending_;
  std::size_t reports_journaled_ = 0;
  // Parts of fused tensors waiting for their siblings, by storage prefix, in arrival order.
  std::map<std::string, std::vector<std::pair<const LinearDesc*, QuantizedMatrix>>> fused_q_;
  std::map<std::string, std::vector<std::pair<const LinearDesc*, Mat>>> fused_f_;
  std::size_t n_siblings(const LinearDesc& linear) const;
};

}  // namespace quant
