// Small text helpers shared across layers.
#pragma once

#include <string>

namespace quant {

// `s` with the ECMAScript regex metacharacters escaped (for rules naming one tensor exactly).
std::string regex_escape(const std::string& s);

// `s` with XML's special characters (< > & " ') as entities, for attribute values and text.
std::string xml_escape(const std::string& s);

}  // namespace quant
