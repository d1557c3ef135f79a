// quant check PATH [--for LOADER ...]: the loaders' rules, pass/fail with the reason.
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "exit_codes.h"
#include "quant/formats/compat.h"

namespace quant::cli {

void register_check(CLI::App& app) {
  struct Options {
    std::string path;
    std::vector<std::string> loaders;
    bool json = false;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("check", "check a checkpoint (or GGUF file) against the rules of the loaders that read it");
  cmd->add_option("path", o->path, "checkpoint directory or .gguf file")->required();
  cmd->add_option("--for", o->loaders, "loaders to check (vllm, transformers, gptqmodel, autoawq, llamacpp, quant); default: those of its format")
      ->delimiter(',');
  cmd->add_flag("--json", o->json, "print the result as JSON on stdout");
  cmd->callback([o] {
    const formats::CheckReport r = formats::check_checkpoint(o->path, o->loaders);
    if (o->json) {
      nlohmann::json rules = nlohmann::json::array();
      for (const auto& x : r.rules) {
        rules.push_back({{"loader", x.loader}, {"rule", x.rule}, {"pass", x.pass}, {"detail", x.detail}, {"source", x.source}});
      }
      std::cout << nlohmann::json{{"path", o->path}, {"format", r.format}, {"loaders", r.loaders}, {"pass", r.pass()}, {"rules", rules}}.dump(2)
                << "\n";
    } else {
      for (const auto& x : r.rules) {
        std::cout << fmt::format("{} {:<13} {}: {}\n", x.pass ? "PASS" : "FAIL", x.loader, x.rule, x.detail);
      }
      std::cout << fmt::format("{} ({}): {} for {}\n", o->path, r.format, r.pass() ? "loads" : "does NOT load", fmt::join(r.loaders, ", "));
    }
    if (!r.pass()) throw RegressionError(fmt::format("{}: fails {} loader rule(s)", o->path,
                                                     std::count_if(r.rules.begin(), r.rules.end(), [](const auto& x) { return !x.pass; })));
  });
}

}  // namespace quant::cli
