// Per-tensor quantization policy as data: an ordered list of regex rules over linear names
// (e.g. "model.layers.3.mlp.down_proj", "lm_head"); the first rule whose regex matches
// (std::regex_search, ECMAScript) decides. No rule matching: the defaults apply.
//
// Rule text (CLI --rule, recipes):  REGEX=skip  or  REGEX=bits:3,group:64,sym:true
#pragma once

#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "quant/core/quantizer.h"
#include "quant/core/strings.h"

namespace quant {

struct Rule {
  std::string pattern;
  std::regex regex;
  bool skip = false;
  std::optional<int> bits;
  std::optional<std::int64_t> group_size;
  std::optional<bool> sym;

  static Rule parse(const std::string& text);  // throws UsageError naming the rule
  std::string to_string() const;
};

struct Decision {
  bool quantize = false;
  QuantSpec spec;
  std::string reason;  // which rule decided, for reports
};

class Policy {
 public:
  Policy() = default;
  Policy(QuantSpec defaults, std::vector<Rule> rules) : defaults_(defaults), rules_(std::move(rules)) {}
  // The built-in table: lm_head stays in the source dtype unless `quantize_lm_head`.
  static Policy standard(const QuantSpec& defaults, bool quantize_lm_head, std::vector<Rule> user_rules = {});

  Decision decide(const std::string& linear_name) const;
  const QuantSpec& defaults() const { return defaults_; }
  const std::vector<Rule>& rules() const { return rules_; }

 private:
  QuantSpec defaults_;
  std::vector<Rule> rules_;
};

}  // namespace quant
