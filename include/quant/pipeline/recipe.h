// Recipes (`quant run`): a JSON file of jobs, each one quantizing command (with per-tensor rules)
// and an optional evaluation. The library parses and checks the structure and runs the batch
// (order, --keep-going, statuses, the report); how one job is executed is the caller's (the CLI
// runs each as a child process of itself, with its options checked by the subcommand's parser).
#pragma once

#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "quant/io/io.h"

namespace quant {

struct RecipeJob {
  std::string name;
  std::string method;  // a subcommand: rtn, gptq, awq, kmeans, gguf
  std::string model;   // resolved against the recipe's folder
  std::string output;  // likewise
  nlohmann::json options = nlohmann::json::object();  // the job's other fields (defaults merged), e.g. bits, rules
  nlohmann::json eval;   // null: no evaluation; else the eval options
  std::string where;     // "RECIPE: job 'NAME' (jobs[i])", for messages
};

// Reads and checks a recipe: valid JSON, an object with a non-empty "jobs" array and optional
// "defaults" (merged under each job), unique names and outputs, a known method, a model folder
// with config.json, an output. Relative paths are resolved against the recipe's folder (`base`
// for option values is the same folder). Throws InputError naming the recipe, job and field.
std::vector<RecipeJob> parse_recipe(const fs::path& path, const std::vector<std::string>& methods);

struct JobOutcome {
  int exit_code = 0;
  bool regressed = false;  // the evaluation's quality gate failed
  nlohmann::json summary;  // the command's --json output (null when unreadable)
};

struct BatchOptions {
  bool keep_going = false;  // run the remaining jobs after one fails
  bool dry_run = false;     // only plan each job
};

// Runs the jobs in order: quantize (then evaluate when the job has an eval and this is no dry
// run). Returns the report, one entry per job: name, method, output, status (ok, planned,
// failed, eval failed, regressed, skipped), exit_code, seconds, bpw, bytes, ppl when known.
// `failed` is set when any job did not succeed.
nlohmann::json run_batch(const std::vector<RecipeJob>& jobs, const BatchOptions& options,
                         const std::function<JobOutcome(const RecipeJob&)>& quantize,
                         const std::function<JobOutcome(const RecipeJob&)>& evaluate, bool& failed);

// The report as a fixed-width table (one line per job).
std::string report_table(const nlohmann::json& report);

}  // namespace quant
