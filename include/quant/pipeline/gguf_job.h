// The calibrated steps of `quant gguf` (they run the model, so they live above the formats).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "quant/formats/gguf_export.h"
#include "quant/formats/imatrix.h"

namespace quant::gguf {

// The imatrix statistic for every linear (by llama.cpp name): mean x² per input column over the
// calibration samples, from the float model layer by layer.
std::map<std::string, std::vector<float>> collect_importance(const Model& model,
                                                             const std::vector<std::vector<std::int32_t>>& samples);

// The imatrix llama-imatrix computes: Σ x² and the row count of every blk.* linear's input
// (and the head's with `process_output`: output.weight, or token_embd.weight when tied) over
// `chunks`, by llama.cpp tensor name.
Imatrix compute_imatrix(const Model& model, const std::vector<std::vector<std::int32_t>>& chunks, bool process_output);
// llama-imatrix's chunks: the token stream cut into consecutive windows of `ctx` (at most
// `max_chunks`, 0: all; a shorter tail dropped), each window's first token replaced by BOS when
// `bos` ≥ 0 (its compute_imatrix).
std::vector<std::vector<std::int32_t>> imatrix_chunks(const std::vector<std::int32_t>& tokens, std::int64_t ctx, std::int64_t max_chunks,
                                                      std::int32_t bos);

// `--from-awq`: AWQ's scale and clipping search for `type` (awq_spec_for; linears whose rows are
// not whole groups use one group per row), applied to float weights (AutoAWQ's
// export_compatible) and written as a dense checkpoint at `dir`, ready for export_gguf.
void write_awq_scaled(const Model& model, const FileType& type, const fs::path& dir,
                      const std::vector<std::vector<std::int32_t>>& samples, const OutputPolicy& output);

// export_gguf, plus the dense twin at options.dense_out when given.
ExportReport export_gguf_job(const Model& model, const fs::path& out, ExportOptions options);

}  // namespace quant::gguf
