// libFuzzer entry point; QUANT_FUZZ_TARGET names the target (targets.h).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "targets.h"

namespace {

const std::filesystem::path& scratch() {
  static const std::filesystem::path dir = [] {
    std::string templ = (std::filesystem::temp_directory_path() / "quant-fuzz-XXXXXX").string();
    if (!::mkdtemp(templ.data())) std::abort();
    std::atexit([] {
      std::error_code ec;
      std::filesystem::remove_all(scratch(), ec);
    });
    return std::filesystem::path(templ);
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const quant::fuzz::Target target = quant::fuzz::targets().at(QUANT_FUZZ_TARGET);
  const std::string problem = quant::fuzz::run_one(target, scratch(), data, size);
  if (!problem.empty()) {
    std::fprintf(stderr, "%s\n", problem.c_str());
    std::abort();
  }
  return 0;
}
