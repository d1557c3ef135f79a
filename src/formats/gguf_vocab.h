// The tokenizer part of a GGUF file: tokenizer.ggml.* metadata from the model directory's
// tokenizer.model (sentencepiece → "llama") or tokenizer.json (byte-level BPE → "gpt2").
#pragma once

#include "quant/io/gguf.h"
#include "quant/model/model.h"

namespace quant::gguf {

void add_tokenizer(const Model& model, Writer& w);

}  // namespace quant::gguf
