// llama.cpp importance-matrix files (docs/formats.md "imatrix files"), read and written:
//  - GGUF (llama-imatrix since mid-2025): general.type "imatrix", imatrix.datasets (strings),
//    imatrix.chunk_count, imatrix.chunk_size (u32); per tensor NAME.in_sum2 (F32, Σ x² per input
//    column) and NAME.counts (F32, the number of rows summed);
//  - legacy .dat (llama-imatrix before it, e.g. c392e50): i32 entry count; per entry i32 name
//    length, name, i32 ncall, i32 nval, nval f32 = (Σ x² / count) · ncall; then i32 chunk count,
//    i32 dataset-name length and the name.
// Either gives llama-quantize's importance: mean x² per column (in_sum2 / counts, or value / ncall).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "quant/io/io.h"

namespace quant::gguf {

namespace fs = std::filesystem;

struct ImatrixEntry {
  std::vector<float> sum2;  // Σ x² per input column (legacy files: mean · ncall)
  double count = 0;         // rows summed (legacy files: ncall)
};

struct Imatrix {
  std::map<std::string, ImatrixEntry> entries;  // llama.cpp tensor name → statistics
  std::vector<std::string> datasets;
  std::int64_t chunk_count = 0;
  std::int64_t chunk_size = 0;
  bool legacy = false;  // read from a .dat file: sum2 is mean · ncall and count is ncall

  // A legacy file's statistics as token sums, as llama-imatrix converts one (load_imatrix_legacy:
  // values · chunk_size, counts ncall · chunk_size); the importance is unchanged.
  void to_token_sums(std::int64_t chunk_size);

  // Mean x² per column, as llama-quantize computes it from either format.
  std::map<std::string, std::vector<float>> importance() const;
  void write_gguf(const fs::path& path, const OutputPolicy& policy) const;
  void write_dat(const fs::path& path, const OutputPolicy& policy) const;
  // Writes .dat when the name ends in ".dat", else GGUF (llama-imatrix's --output-format rule).
  void write(const fs::path& path, const OutputPolicy& policy) const;
};

// Reads either format (GGUF by its magic, else legacy), validated as hostile input.
Imatrix read_imatrix_file(const fs::path& path);

}  // namespace quant::gguf
