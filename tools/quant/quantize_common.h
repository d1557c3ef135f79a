// Options shared by the quantizing subcommands (rtn, gptq, awq, ...): output, format, bits,
// group size, rules; and the summary they print.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "quant/model/calibration.h"
#include "quant/pipeline/layer_loop.h"
#include "quant/pipeline/plan.h"
#include "quant/pipeline/policy.h"
#include "quant/pipeline/session.h"

namespace quant::cli {

struct QuantizeCliOptions {
  std::string model;
  std::string out;
  std::string format = "gptq";
  int bits = 4;
  std::int64_t group_size = 128;
  bool sym = false;
  bool force = false;
  bool replace_foreign = false;
  bool skip_unsupported = false;
  bool quantize_lm_head = false;
  bool json = false;
  std::vector<std::string> rules;
  std::string shard_size = "5GB";
  double target_bpw = 0;                        // > 0: mixed precision by sensitivity
  std::vector<int> candidate_bits = {2, 3, 4, 8};  // the widths GPTQ loaders accept
  bool dry_run = false;
  bool no_resume = false;
  std::string journal_limit;
  std::string sensitivity = "auto";
  // compressed-tensors scheme preset (W4A16, W8A16, W8A8, FP8_DYNAMIC, W8A16_FP8): sets bits,
  // group, symmetry, weight type and activation quantization, and the format.
  std::string scheme;
  // fp8 schemes: "channel" (one weight scale per output channel, the presets') or "tensor".
  std::string fp8_weight_scale = "channel";
  CLI::Option* fp8_scale_opt = nullptr;
  // Activation schemes (W8A8, FP8_DYNAMIC): one static input scale per linear, calibrated,
  // instead of dynamic per-token scales (the FP8 preset is static already).
  bool static_activations = false;
  // The options a scheme sets, to refuse explicit values that contradict it.
  CLI::Option* bits_opt = nullptr;
  CLI::Option* group_opt = nullptr;
  CLI::Option* sym_opt = nullptr;
  CLI::Option* format_opt = nullptr;
};

// Calibration options of calibrated methods (gptq, awq, ...).
struct CalibCliOptions {
  std::string text;
  std::string tokens;
  std::int64_t nsamples = 128;
  std::int64_t seqlen = 2048;
  std::uint64_t seed = 0;
  bool bos_first = false;  // see CalibOptions::bos_first
  bool no_memory_check = false;
  std::string moe_calibration = "routed";  // RunOptions::moe_calibration
  std::int64_t moe_min_tokens = 16;
};
// moe_options: also --moe-calibration / --moe-min-tokens (the layer-sequential quantizers).
void add_calib_options(CLI::App* cmd, CalibCliOptions& o, std::int64_t default_seqlen, bool moe_options = true);
// Loads the calibration windows. Without --calib/--calib-tokens, falls back (with a warning) to
// the Apache-2.0 licence text every Debian system ships.
std::vector<std::vector<std::int32_t>> load_calib(const Model& model, const CalibCliOptions& o);

// Adds the shared options to a subcommand.
// `default_sym`: GPTQ's ecosystem default (GPTQModel, transformers, optimum: sym=True; vLLM's
// Marlin kernels take symmetric 4/8-bit only); AWQ's is asymmetric (AutoAWQ zero_point=True).
void add_quantize_options(CLI::App* cmd, QuantizeCliOptions& o, const std::string& default_format, bool default_sym);

// Policy (defaults + rules), run options (output path defaulting to <model>-<method>-w4g128).
// The rules from --rule, preceded, with --target-bpw, by the sensitivity allocation (measured
// under the Hessian of `samples`, or the plain squared error when there are none).
Policy make_policy(const QuantizeCliOptions& o, const QuantSpec& defaults, const Model& model,
                   const std::vector<std::vector<std::int32_t>>& samples = {});
// With --dry-run: prints the plan (each linear's decision, bits, group, estimated output size)
// on stdout and returns true; the command then stops before writing anything.
// The JSON also carries `estimate` (peak_rss_bytes, seconds; pipeline/estimate.h) for the
// calibration `samples`.
bool dry_run(const QuantizeCliOptions& o, const Model& model, const Plan& plan, const RunOptions& run,
             const std::vector<std::vector<std::int32_t>>& samples);
// Plans (refusing what the format cannot hold), prints the plan with --dry-run, else quantizes
// with a progress bar and prints the summary: the common tail of every quantizing command.
void plan_and_run(const QuantizeCliOptions& o, const Model& model, const Plan& plan, const Method& method, const RunOptions& run,
                  const std::vector<std::vector<std::int32_t>>& samples);
// Also checks the output against the inputs (the model, `calib`'s files) and what exists there,
// so a command refuses before loading anything.
RunOptions make_run_options(const QuantizeCliOptions& o, const std::string& method, const QuantSpec& defaults,
                            const CalibCliOptions* calib = nullptr);
// The output policy of a command: --force, --replace-foreign, and its inputs.
OutputPolicy output_policy(bool force, bool replace_foreign, std::vector<fs::path> inputs);
// The spec of the options (applying --scheme, which may also set o.format).
QuantSpec make_spec(QuantizeCliOptions& o);
// --smooth ALPHA and --smooth-mappings (rtn, gptq): SmoothQuant before the method; needs
// activation quantization.
struct SmoothCliOptions {
  std::string alpha;  // empty: off; a number in [0, 1] or "auto"
  std::string mappings = "norms";
};
void add_smooth_options(CLI::App* cmd, SmoothCliOptions& o);
std::unique_ptr<Method> maybe_smoothed(std::unique_ptr<Method> method, const SmoothCliOptions& o, const QuantSpec& spec);

// Prints the summary: a table on stderr, JSON on stdout with --json (else the output path).
void print_report(const QuantizeReport& r, bool json);

// For commands that stream one large tensor or layer after another (rtn, gguf, awq, gptq, eval):
// keep freed blocks in the heap instead of returning each (> 32 MB) to the kernel, so the next
// tensor's or layer's buffers need no fresh page faults — half of RTN's time on a 1.1B model. Peak
// RSS stays near the largest working set (the same blocks are reused). GPTQ 1.1B w4 g128
// (bench/methods.sh, 2026-12-02): 305.2 s / 2068 MB, against 376.2 s / 1766 MB when only blocks
// under 32 MB were kept (docs/performance.md).
void reuse_large_allocations();

// Parses "5GB", "500MB", "1024" into bytes.
std::uint64_t parse_size(const std::string& s);

}  // namespace quant::cli
