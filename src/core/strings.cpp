#include "quant/core/strings.h"

namespace quant {

std::string regex_escape(const std::string& s) {
  std::string r;
  for (char c : s) {
    if (std::string(".^$|()[]{}*+?\\").find(c) != std::string::npos) r += '\\';
    r += c;
  }
  return r;
}

}  // namespace quant
