// The loaders' rules, checked on a written checkpoint (`quant check`): each rule names the loader
// and the file and function it comes from (docs/compatibility.md lists them all). Works on quant's
// outputs and on checkpoints made by other tools: GPTQ, AWQ, quant's lut, dense HF directories
// and GGUF files.
#pragma once

#include <string>
#include <vector>

#include "quant/io/io.h"

namespace quant::formats {

// Loaders quant knows the rules of.
inline const std::vector<std::string> kLoaders = {"vllm", "transformers", "gptqmodel", "autoawq", "llamacpp", "quant"};

struct RuleResult {
  std::string loader;
  std::string rule;    // what is required
  bool pass = false;
  std::string detail;  // what was found, and how to fix it when it fails
  std::string source;  // the loader file and function the rule comes from
};

struct CheckReport {
  std::string format;                // gptq, awq, lut, dense, gguf, or the unknown quant_method
  std::vector<std::string> loaders;  // the loaders checked
  std::vector<RuleResult> rules;
  bool pass() const;
};

// Checks `path` (a checkpoint directory or a .gguf file) for `loaders` (empty: the loaders that
// read its format). Throws UsageError for an unknown loader name, InputError for a path that is
// neither a checkpoint nor a GGUF file.
CheckReport check_checkpoint(const fs::path& path, std::vector<std::string> loaders);

}  // namespace quant::formats
