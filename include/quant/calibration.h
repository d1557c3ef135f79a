// Calibration data and layer-sequential processing, shared by every calibrated method (GPTQ,
// AWQ, k-means sensitivity, GGUF importance). Memory: one decoder layer's weights plus the
// hidden states of all samples (nsamples × seqlen × hidden floats), never the whole model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <vector>

#include "quant/forward.h"
#include "quant/model.h"
#include "quant/tokenizer.h"

namespace quant {

struct CalibOptions {
  fs::path text;            // calibration text (tokenized with the model's tokenizer)
  fs::path tokens;          // or pre-tokenized ids
  std::int64_t nsamples = 128;
  std::int64_t seqlen = 2048;  // capped by the model context
  std::uint64_t seed = 0;
};

// `nsamples` windows of `seqlen` tokens at uniformly random offsets of the tokenized text
// (std::mt19937_64 seeded with `seed`; deterministic). Throws InputError when the text is
// shorter than one window.
std::vector<std::vector<std::int32_t>> load_calibration(const Model& model, const CalibOptions& options,
                                                        const Tokenizer* tokenizer);

// Holds the hidden states entering the current decoder layer for every sample.
class LayerRunner {
 public:
  LayerRunner(const Model& model, const std::vector<std::vector<std::int32_t>>& samples);
  // Runs `layer` over every sample (one at a time, in order) calling `hook` with the inputs of
  // each capture point; the hidden states are not changed.
  void capture(const LayerWeights& layer, const LinearInputHook& hook) const;
  // Replaces the hidden states by the layer's outputs (parallel over samples).
  void advance(const LayerWeights& layer);
  const std::vector<Mat>& hidden() const { return hidden_; }
  std::int64_t n_tokens() const;
  const ModelConfig& config() const { return model_.config(); }
  const RopeTable& rope() const { return rope_; }

 private:
  const Model& model_;
  RopeTable rope_;
  std::vector<Mat> hidden_;
};

// H += xᵀx, in fixed column blocks spread over threads (bit-identical for any thread count).
void accumulate_gram(Mat& H, const Mat& x);

// The Hessians 2/n Σ x xᵀ of the requested capture points' inputs over all calibration tokens.
std::map<CapturePoint, Mat> collect_hessians(const LayerRunner& runner, const LayerWeights& layer,
                                             const std::vector<CapturePoint>& points);

}  // namespace quant
