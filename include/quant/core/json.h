// JSON input with bounds: every JSON file quant reads (config.json, tokenizer.json,
// tokenizer_config.json, the shard index, safetensors headers, recipes, resume journals) is parsed
// here, in linear time, with a bounded nesting depth and, by default, duplicate keys refused.
// Limits (docs/cli.md "Input limits"): nesting depth 64; safetensors headers ≤ 100 MB (their own
// check); other JSON files ≤ 1 GiB.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace quant {

struct JsonLimits {
  int max_depth = 64;
  // Duplicate keys in one object are refused (nlohmann and Python keep the last one silently).
  // tokenizer.json is read with this off, as Hugging Face tokenizers (serde maps) read it.
  bool reject_duplicate_keys = true;
};

// Parses `text`; throws InputError "<what>: ..." naming the problem (syntax with its byte
// offset, the depth limit, a duplicate key with its path). Checks for interruption (SIGINT/SIGTERM)
// while parsing large texts.
nlohmann::json parse_json(std::string_view text, const std::string& what, const JsonLimits& limits = {});

}  // namespace quant
