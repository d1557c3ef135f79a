// Subcommands of the `quant` tool. Each registers its options and a callback that calls into
// the library; the callbacks stay thin.
#pragma once

#include <CLI/CLI.hpp>
#include <cstddef>
#include <filesystem>

namespace quant::cli {

// Options shared by every subcommand.
struct GlobalOptions {
  int threads = 0;  // 0: all cores
  bool verbose = false;
  bool quiet = false;
};
GlobalOptions& global_options();

void register_inspect(CLI::App& app);
void register_eval(CLI::App& app);
void register_rtn(CLI::App& app);
void register_gptq(CLI::App& app);
void register_awq(CLI::App& app);
void register_kmeans(CLI::App& app);
void register_gguf(CLI::App& app);
void register_imatrix(CLI::App& app);
void register_run(CLI::App& app);
void register_check(CLI::App& app);

// Parses and checks a recipe as `quant run --dry-run` does (every job's fields, values, model
// and output) without running anything; returns the number of jobs. Throws quant::Error.
std::size_t validate_recipe(const std::filesystem::path& path);

}  // namespace quant::cli
