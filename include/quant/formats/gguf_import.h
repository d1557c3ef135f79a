// A GGUF file read as a model: `quant eval FILE.gguf` scores exactly the weights llama.cpp will
// run. The architecture becomes an HF config, each tensor is presented under its HF name and
// dequantized (every block type quant writes) when its layer is loaded, the reverse of
// gguf_export's mapping (llama's q/k rows un-permuted, Gemma's stored 1 + w norms back to w).
// The tokenizer comes from the same file (Tokenizer::load).
#pragma once

#include <filesystem>

#include "quant/model/model.h"

namespace quant::formats {

namespace fs = std::filesystem;

// Throws InputError naming the file for an architecture, RoPE variant or tensor it cannot
// map (supported: llama, qwen2, qwen3, gemma2, phi3 as llama.cpp's converter writes them).
Model open_gguf_model(const fs::path& file);

}  // namespace quant::formats
