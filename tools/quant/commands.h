// Subcommands of the `quant` tool. Each registers its options and a callback that calls into
// the library; the callbacks stay thin.
#pragma once

#include <CLI/CLI.hpp>
#include <cstddef>
#include <filesystem>
#include <string>

namespace quant::cli {

// Options shared by every subcommand.
struct GlobalOptions {
  int threads = 0;  // 0: all cores
  bool verbose = false;
  bool quiet = false;
};
GlobalOptions& global_options();

// `quant run` names each job it starts by an id (a hash of the job's command) in the child's
// environment, QUANT_RUN_JOB_ID; quantizing commands record it in their output so that a retried
// shard recognises the jobs it already finished. "" outside quant run.
inline constexpr const char* kRunJobIdEnv = "QUANT_RUN_JOB_ID";
std::string run_job_id();

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
