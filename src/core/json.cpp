#include "quant/core/json.h"

#include <set>
#include <vector>

#include "quant/core/error.h"
#include "quant/core/interrupt.h"

namespace quant {

namespace {

using json = nlohmann::json;

// A SAX handler that builds the DOM with nlohmann's own (linear-time) builder while it counts
// depth and keys. nlohmann's callback parser is quadratic in an object's size (its end_object
// rescans the parent for discarded values), which made 100k-entry headers take minutes.
class BoundedSax {
 public:
  BoundedSax(json& out, const std::string& what, const JsonLimits& limits) : dom_(out, true), what_(what), limits_(limits) {}

  bool null() { return tick() && dom_.null(); }
  bool boolean(bool v) { return tick() && dom_.boolean(v); }
  bool number_integer(json::number_integer_t v) { return tick() && dom_.number_integer(v); }
  bool number_unsigned(json::number_unsigned_t v) { return tick() && dom_.number_unsigned(v); }
  bool number_float(json::number_float_t v, const json::string_t& s) { return tick() && dom_.number_float(v, s); }
  bool string(json::string_t& v) { return tick() && dom_.string(v); }
  bool binary(json::binary_t& v) { return tick() && dom_.binary(v); }
  bool start_object(std::size_t n) {
    enter();
    keys_.emplace_back();
    return dom_.start_object(n);
  }
  bool key(json::string_t& k) {
    tick();
    if (limits_.reject_duplicate_keys && !keys_.back().insert(k).second) {
      fail("{}: key '{}' appears twice in one object{} (refusing to guess which one is meant)", what_, k,
           path_.empty() ? std::string() : " (in '" + path_.back() + "')");
    }
    last_key_ = k;
    return dom_.key(k);
  }
  bool end_object() {
    leave();
    keys_.pop_back();
    return dom_.end_object();
  }
  bool start_array(std::size_t n) {
    enter();
    return dom_.start_array(n);
  }
  bool end_array() {
    leave();
    return dom_.end_array();
  }
  bool parse_error(std::size_t position, const std::string&, const nlohmann::detail::exception& e) {
    std::string msg = e.what();
    if (const auto p = msg.find("] "); p != std::string::npos) msg = msg.substr(p + 2);
    fail("{}: not valid JSON (byte {}): {}", what_, position, msg);
  }

 private:
  bool tick() {
    if ((++events_ & 0xffff) == 0) check_interrupted();
    return true;
  }
  void enter() {
    tick();
    if (++depth_ > limits_.max_depth) fail("{}: JSON nested deeper than {} levels (refused: no quant input needs more)", what_, limits_.max_depth);
    path_.push_back(last_key_);
  }
  void leave() {
    --depth_;
    path_.pop_back();
  }

  nlohmann::detail::json_sax_dom_parser<json> dom_;
  const std::string& what_;
  const JsonLimits& limits_;
  int depth_ = 0;
  std::uint64_t events_ = 0;
  std::vector<std::set<std::string>> keys_;
  std::vector<std::string> path_;
  std::string last_key_;
};

}  // namespace

json parse_json(std::string_view text, const std::string& what, const JsonLimits& limits) {
  json out;
  BoundedSax sax(out, what, limits);
  try {
    json::sax_parse(text.begin(), text.end(), &sax);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", what, e.what());
  }
  return out;
}

}  // namespace quant
