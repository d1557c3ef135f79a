// Recipes (`quant run`): a JSON file of jobs, each one quantizing command (with per-tensor rules)
// and an optional evaluation. The library parses and checks the structure and runs the batch
// (order, --keep-going, statuses, the report); how one job is executed is the caller's (the CLI
// runs each as a child process of itself, with its options checked by the subcommand's parser).
#pragma once

#include <functional>
#include <optional>
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
  // When set and it returns an object (the summary of a complete output this very job wrote
  // before, e.g. in an earlier attempt of a retried shard), the job is not run again: status
  // "done", its figures taken from that summary (its eval still runs).
  std::function<nlohmann::json(const RecipeJob&)> completed;
  // Set on every entry when >= 0: the shard that ran it.
  long shard = -1;
};

// Runs the jobs in order: quantize (then evaluate when the job has an eval and this is no dry
// run). Returns the report, one entry per job: name, method, output, status (ok, done, planned,
// failed, eval failed, regressed, skipped), exit_code, seconds, bpw, bytes, ppl when known.
// `failed` is set when any job did not succeed.
nlohmann::json run_batch(const std::vector<RecipeJob>& jobs, const BatchOptions& options,
                         const std::function<JobOutcome(const RecipeJob&)>& quantize,
                         const std::function<JobOutcome(const RecipeJob&)>& evaluate, bool& failed);

// The report as a fixed-width table (one line per job).
std::string report_table(const nlohmann::json& report);

// For a dry run's report: each job's estimated peak memory and time (the `estimate` its plan
// printed), then what one worker running them in turn needs: the largest peak and the sum of the
// times, and a Slurm request with a 1.5× margin (`--mem=…M --time=…`).
std::string estimates_table(const nlohmann::json& report);

// --- Sharding a recipe over workers (Slurm job arrays, Kubernetes Indexed Jobs; docs/cluster.md) ---

struct Shard {
  std::size_t index = 0;  // 0-based
  std::size_t count = 1;
  std::string source;  // where it came from, for the log ("--shard 1/4", "SLURM_ARRAY_TASK_ID=…")
};

// "K/N" with 0 ≤ K < N (UsageError otherwise).
Shard parse_shard(const std::string& text);

// The shard the environment names, `env` standing for getenv: a Slurm array task
// (SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT; the array must have step
// 1), else a Kubernetes Indexed Job pod (JOB_COMPLETION_INDEX of `count`, or of QUANT_SHARDS when
// `count` is 0). nullopt when neither is set; UsageError when one is set but inconsistent.
std::optional<Shard> shard_from_environment(std::size_t count, const std::function<const char*(const char*)>& env);

// The shard of every job, deterministic in the recipe alone: jobs joined by a chain (one reads
// another's output) form one group and stay together; groups are dealt to shards round-robin in
// the order of their first job.
std::vector<std::size_t> assign_shards(const std::vector<RecipeJob>& jobs, std::size_t count);

// Combines shard reports (each the JSON array `quant run --report` writes) into one report in
// recipe order. A job is matched by name and output; when several reports have it (a retried
// shard), a succeeded entry wins over others, then the later report in `reports`' order. A job in
// no report gets status "missing". `failed` is set when any job did not succeed.
nlohmann::json merge_reports(const std::vector<RecipeJob>& jobs, const std::vector<std::pair<std::string, nlohmann::json>>& reports,
                             bool& failed);

// The report as JUnit XML (one <testcase> per job; failed, regressed, missing … as <failure>,
// skipped as <skipped/>), starting with quant's report marker.
std::string report_junit(const nlohmann::json& report, const std::string& suite);

}  // namespace quant
