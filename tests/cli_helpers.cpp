#include "cli_helpers.h"

#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fixtures.h"

namespace quant::testing {

CommandResult run_quant(const std::string& args) {
  TempDir tmp;
  const std::string out = (tmp / "out").string(), err = (tmp / "err").string();
  // QUANT_TEST_BINARY: run the CLI tests against another build (e.g. an older one, to show which
  // cases failed before a fix).
  const char* other = std::getenv("QUANT_TEST_BINARY");
  const std::string cmd = std::string(other && *other ? other : QUANT_BINARY) + " " + args + " >" + out + " 2>" + err;
  const int status = std::system(cmd.c_str());
  CommandResult r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  auto slurp = [](const std::string& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

}  // namespace quant::testing
