// Small text helpers shared across layers.
#pragma once

#include <string>

namespace quant {

// `s` with the ECMAScript regex metacharacters escaped (for rules naming one tensor exactly).
std::string regex_escape(const std::string& s);

}  // namespace quant
