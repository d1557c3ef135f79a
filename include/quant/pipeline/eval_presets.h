// The standard perplexity texts of the quantization papers, built from files the user supplies
// exactly as the GPTQ reference code (datautils.py) builds them from Hugging Face datasets
// (docs/cli.md "Evaluation presets"):
//   wikitext2  wiki.test.raw → the `wikitext-2-raw-v1` test rows, "\n\n".join(rows)
//   ptb        ptb.test.txt  → the `ptb_text_only` test sentences, " ".join(sentences)
//   c4         c4-validation.00000-of-00008.json (JSONL) → 256 windows of ctx tokens drawn
//              with Python's random.seed(0) (get_c4's validation set)
//   c4-new     the same file → " ".join(first 1100 texts), first 256 × ctx tokens (get_c4_new)
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "quant/model/tokenizer.h"

namespace quant {

enum class EvalPreset { none, wikitext2, ptb, c4, c4_new };
EvalPreset parse_eval_preset(const std::string& name);  // throws UsageError listing the names
std::string eval_preset_name(EvalPreset p);

// Python's str.strip() (Unicode whitespace) and universal-newline line splitting (\n, \r\n
// and \r each end a line; the line keeps a single "\n").
std::string_view python_strip(std::string_view s);
std::vector<std::string> python_lines(std::string_view text);

// wikitext2: each line of the raw file is a row ("" when blank), rows joined with "\n\n".
// ptb: each line stripped, joined with " ".
std::string preset_text(EvalPreset p, std::string_view raw);

// The "text" field of each line of a JSONL file (C4's shards).
std::vector<std::string> read_jsonl_texts(std::string_view raw, const std::string& where);

// CPython's random module (MT19937, seeded by init_by_array with the seed's 32-bit words), as
// far as randint needs it: bit-exact with Python for every seed and range.
class PythonRandom {
 public:
  explicit PythonRandom(std::uint64_t seed);
  std::uint32_t next32();
  std::uint64_t getrandbits(int k);  // k ≤ 64
  // randint(a, b): a ≤ b, both ends included; throws Error on an empty range (Python's ValueError).
  std::int64_t randint(std::int64_t a, std::int64_t b);

 private:
  std::uint32_t mt_[624];
  int index_ = 624;
};

// get_c4's validation windows: `n` times, draw documents until one has ≥ ctx tokens (with
// the tokenizer's BOS, as tokenizer(text) adds it), then a random start in [0, len − ctx − 1];
// the windows concatenated (n × ctx tokens).
std::vector<std::int32_t> c4_windows(const std::vector<std::string>& docs, const Tokenizer& tok, std::int64_t ctx, int n = 256,
                                     std::uint64_t seed = 0);
// get_c4_new's: " ".join(docs[:1100]) tokenized, its first n × ctx tokens.
std::vector<std::int32_t> c4_new_tokens(const std::vector<std::string>& docs, const Tokenizer& tok, std::int64_t ctx, int n = 256);

}  // namespace quant
