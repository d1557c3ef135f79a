#include "quant/pipeline/policy.h"

#include "quant/core/error.h"

namespace quant {

Rule Rule::parse(const std::string& text) {
  const auto eq = text.rfind('=');
  if (eq == std::string::npos || eq == 0) {
    fail<UsageError>("rule '{}': expected REGEX=skip or REGEX=bits:N,group:N,sym:BOOL", text);
  }
  Rule r;
  r.pattern = text.substr(0, eq);
  try {
    r.regex = std::regex(r.pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    fail<UsageError>("rule '{}': invalid regex '{}': {}", text, r.pattern, e.what());
  }
  const std::string body = text.substr(eq + 1);
  if (body == "skip") {
    r.skip = true;
    return r;
  }
  std::size_t pos = 0;
  while (pos <= body.size()) {
    const auto comma = body.find(',', pos);
    const std::string item = body.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    const auto colon = item.find(':');
    if (colon == std::string::npos) fail<UsageError>("rule '{}': '{}' is not key:value", text, item);
    const std::string key = item.substr(0, colon), value = item.substr(colon + 1);
    try {
      if (key == "bits") r.bits = std::stoi(value);
      else if (key == "group" || key == "group_size") r.group_size = std::stoll(value);
      else if (key == "sym") {
        if (value != "true" && value != "false") throw std::invalid_argument(value);
        r.sym = value == "true";
      } else if (key == "method") {
        fail<UsageError>("rule '{}': 'method:' is not supported per tensor (one method quantizes a whole run); "
                         "use one recipe job per method instead", text);
      } else {
        fail<UsageError>("rule '{}': unknown key '{}' (bits, group, sym)", text, key);
      }
    } catch (const std::logic_error&) {
      fail<UsageError>("rule '{}': bad value '{}' for '{}'", text, value, key);
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  if (r.bits && (*r.bits < 2 || *r.bits > 8)) fail<UsageError>("rule '{}': bits must be 2..8", text);
  if (r.group_size && (*r.group_size == 0 || *r.group_size < -1)) fail<UsageError>("rule '{}': group must be positive or -1", text);
  return r;
}

std::string Rule::to_string() const {
  if (skip) return pattern + "=skip";
  std::string s = pattern + "=";
  std::string sep;
  if (bits) { s += sep + "bits:" + std::to_string(*bits); sep = ","; }
  if (group_size) { s += sep + "group:" + std::to_string(*group_size); sep = ","; }
  if (sym) { s += sep + "sym:" + (*sym ? "true" : "false"); sep = ","; }
  return s;
}

Policy Policy::standard(const QuantSpec& defaults, bool quantize_lm_head, std::vector<Rule> user_rules) {
  std::vector<Rule> rules = std::move(user_rules);
  if (!quantize_lm_head) rules.push_back(Rule::parse("^lm_head$=skip"));
  return Policy(defaults, std::move(rules));
}

Decision Policy::decide(const std::string& name) const {
  for (const auto& r : rules_) {
    if (!std::regex_search(name, r.regex)) continue;
    Decision d;
    d.reason = "rule " + r.to_string();
    if (r.skip) return d;
    d.quantize = true;
    d.spec = defaults_;
    if (r.bits) d.spec.bits = *r.bits;
    if (r.group_size) d.spec.group_size = *r.group_size;
    if (r.sym) d.spec.sym = *r.sym;
    return d;
  }
  return Decision{true, defaults_, "defaults"};
}

}  // namespace quant
