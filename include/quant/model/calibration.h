// Calibration data and layer-sequential processing, shared by every calibrated method (GPTQ,
// AWQ, k-means sensitivity, GGUF importance). Memory: one decoder layer's weights plus the
// hidden states of all samples (nsamples × seqlen × hidden floats), never the whole model.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <vector>

#include "quant/model/forward.h"
#include "quant/model/model.h"
#include "quant/model/tokenizer.h"

namespace quant {

struct CalibOptions {
  fs::path text;            // calibration text (tokenized with the model's tokenizer)
  fs::path tokens;          // or pre-tokenized ids
  std::int64_t nsamples = 128;
  std::int64_t seqlen = 2048;  // capped by the model context
  std::uint64_t seed = 0;
  // Put the model's BOS in each window's first position, as llama-imatrix does: position 0 of
  // real inference is BOS, whose attention-sink activations then count in the statistics.
  bool bos_first = false;
  // Refuse, before reading the text, when the windows' activations will not fit in memory.
  bool check_memory = true;
};

// Peak bytes the calibrated layer loop holds for `nsamples` windows of `seqlen` tokens: the
// hidden states in and out of a layer (2 × N·T·hidden float32), one window's MLP and attention
// temporaries, one layer's float weights and its largest Hessian.
std::uint64_t calibration_memory_estimate(const ModelConfig& config, std::int64_t nsamples, std::int64_t seqlen);

// `nsamples` windows of `seqlen` tokens at uniformly random offsets of the tokenized text
// (std::mt19937_64 seeded with `seed`; deterministic). Throws InputError when the text is
// shorter than one window.
std::vector<std::vector<std::int32_t>> load_calibration(const Model& model, const CalibOptions& options,
                                                        const Tokenizer* tokenizer);

// Holds the hidden states entering the current decoder layer for every sample, and runs the
// layer stage by stage so that each capture point's inputs are computed once, with whatever
// weights the layer has at that moment (true-sequential quantization replaces q/k/v before
// o_proj's inputs are computed, and so on). One forward pass per layer in all.
class LayerRunner {
 public:
  LayerRunner(const Model& model, const std::vector<std::vector<std::int32_t>>& samples);

  // The inputs of capture point `p` for every sample, computed from the previous stage's cached
  // activations with `layer`. Points come in forward order (attn_in, o_in, mlp_in, down_in);
  // asking for a later point computes the stages in between; asking for an earlier one than
  // the last computed is an error.
  const std::vector<Mat>& stage(CapturePoint p, const LayerWeights& layer);
  // Completes the layer from the cached stages (the rest runs with `layer`) and moves the
  // hidden states to the layer's outputs.
  void finish(const LayerWeights& layer);
  // A sparse layer whose experts were streamed: completes it with the MLP outputs `mlp_out`
  // (one [tokens, hidden] per sample, added to the hidden states after attention).
  void finish_with(const LayerWeights& layer, const std::vector<Mat>& mlp_out);
  // Recomputes the whole layer with `layer` (discarding cached stages) and moves on.
  void advance(const LayerWeights& layer);

  const std::vector<Mat>& hidden() const { return hidden_; }
  // Replaces the hidden states (resuming after `layer` journaled layers).
  void set_hidden(std::vector<Mat> hidden, int layer);
  std::int64_t n_tokens() const;
  const ModelConfig& config() const { return model_.config(); }
  const RopeTable& rope() const { return rope_; }

 private:
  void compute(int stage, const LayerWeights& layer);
  // Refuses activations that are NaN/inf or so large that the next norm's squares overflow
  // (|x| > 1e18): the weights before them overflow float32 (InputError naming the linears).
  void check_finite(const std::vector<Mat>& xs, int stage, bool layer_input) const;
  const Model& model_;
  int layer_ = 0;  // the decoder layer the next stages belong to
  RopeTable rope_;
  std::vector<Mat> hidden_;
  int stage_ = -1;  // last computed stage: 0 attn_in, 1 o_in, 2 mlp_in, 3 down_in
  std::vector<Mat> act_;    // the last stage's activations
  std::vector<Mat> h_mid_;  // hidden + attention output, from stage 2 on
};

// Per input column, the mean over every row of every matrix of x_j² (the Hessian's diagonal / 2,
// llama.cpp's imatrix statistic); fixed-order double sums, deterministic.
std::vector<float> mean_square_inputs(const std::vector<Mat>& xs);
// Σ x² per column over all rows of `xs` (double), and the number of rows.
std::vector<double> sum_square_inputs(const std::vector<Mat>& xs, std::int64_t& rows);

// H += xᵀx on and below the diagonal of each 256-row block (half the work of the full product;
// entries above the block diagonals are not all updated) by gemm_xwt, each entry continuing one
// ordered fma chain over the tokens: bit-identical for any thread count and CPU kernel.
// mirror_lower then copies the lower triangle up.
void accumulate_gram(Mat& H, const Mat& x);
void mirror_lower(Mat& H);

// The Hessian 2/n Σ x xᵀ over all rows of all the matrices (in order: deterministic).
// block > 0 (and below the width): only the diagonal blocks of that width are accumulated, the
// rest of H is zero (for a method that reads nothing else: AWQ's per-group clipping).
Mat hessian(const std::vector<Mat>& xs, std::int64_t block = 0);

}  // namespace quant
