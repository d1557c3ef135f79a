// Runs the quant binary as a user would and captures exit status, stdout and stderr.
#pragma once

#include <string>

namespace quant::testing {

struct CommandResult {
  int rc = -1;
  std::string out;
  std::string err;
};

// Runs `quant <args>` through /bin/sh (args are shell-quoted by the caller); $QUANT_TEST_BINARY
// overrides the binary.
CommandResult run_quant(const std::string& args);

}  // namespace quant::testing
