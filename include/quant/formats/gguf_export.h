// Exporting a Llama-family checkpoint to a GGUF file llama.cpp loads: llama metadata, the
// sentencepiece vocabulary, tensors under llama.cpp's names with q/k rows permuted back to
// llama.cpp's RoPE pairing, norms in F32, and the linear/embedding weights in the chosen type
// with llama.cpp's per-tensor rules and fallbacks.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "quant/io/gguf.h"
#include "quant/model/model.h"
#include "quant/core/quantizer.h"

namespace quant::gguf {

// A target like llama-quantize's: a name ("q4_0", "q8_0", "f16", ...), its llama_ftype number
// (general.file_type) and the base tensor type.
struct FileType {
  std::string name;
  std::uint32_t ftype = 0;
  GgmlType base = GgmlType::F16;
};
FileType parse_file_type(const std::string& name);  // throws UsageError listing the choices

struct ExportOptions {
  FileType type;
  // Per-tensor importance (llama.cpp tensor name → mean x² per input column), e.g. from
  // calibration; tensors without an entry are quantized unweighted.
  std::map<std::string, std::vector<float>> importance;
  OutputPolicy output;  // what may be replaced; the inputs it may not touch
  std::string name;  // general.name; empty: the model directory's name
  std::string job_id;  // written as quant.job_id when set (quant run's jobs)
  // Also write the GGUF's weights, dequantized (and un-permuted), as a dense HF checkpoint
  // here, so that `quant eval` measures exactly what llama.cpp runs (export_gguf_job does).
  fs::path dense_out;
  // Called with every HF weight as the GGUF stores it, dequantized and un-permuted ([rows, cols]).
  std::function<void(const std::string& hf_name, const std::vector<float>& values, std::vector<std::int64_t> shape)> dequantized;

  // Per-tensor types as llama-quantize spells them (docs/formats.md "Per-tensor types"):
  // --tensor-type REGEX=TYPE (the first pattern found in the tensor name wins, then the row
  // fallbacks), --output-tensor-type, --token-embedding-type, --pure (no mixture rules),
  // --leave-output-tensor (output.weight in the checkpoint's dtype).
  std::vector<std::pair<std::string, GgmlType>> tensor_types;
  std::optional<GgmlType> output_tensor_type, token_embedding_type;
  bool pure = false;
  bool leave_output = false;
  // Plan only: choose every tensor's type and the file size, write nothing. `importance_planned`
  // says importance would be given (it changes the q4_0/q5_0 mixes) without computing it.
  bool dry_run = false;
  bool importance_planned = false;
};

struct ExportReport {
  fs::path output;
  std::uint64_t bytes = 0;
  std::map<std::string, std::string> tensor_types;  // llama.cpp name → type name
  std::vector<TensorInfo> tensors;                   // in file order, with types and sizes
  double seconds = 0;
};

// The llama.cpp name of a linear ("blk.3.attn_q.weight", "output.weight").
std::string gguf_linear_name(const LinearDesc& linear);

// llama.cpp's RoPE pairing from HF's rotate_half layout: within each head, row i·2 + t of the
// result is row t·(head_dim/2) + i of `w` ([rows, cols] row-major, rows = n_head · head_dim).
std::vector<float> permute_rope_rows(const std::vector<float>& w, std::int64_t n_head, std::int64_t cols);
// The inverse of permute_rope_rows.
std::vector<float> unpermute_rope_rows(const std::vector<float>& w, std::int64_t n_head, std::int64_t cols);

// A llama.cpp imatrix file, GGUF or legacy .dat (formats/imatrix.h), as importance: mean x² per
// input column, as llama-quantize reads it.
std::map<std::string, std::vector<float>> read_imatrix(const fs::path& path);

// The AWQ spec matching a GGUF type's base: its bits, groups of 32 (16 for Q6_K), symmetric for
// the _0 types, Q6_K and Q8_0. Throws UsageError for F32/F16.
QuantSpec awq_spec_for(const FileType& type);
ExportReport export_gguf(const Model& model, const fs::path& out, const ExportOptions& options);

}  // namespace quant::gguf
