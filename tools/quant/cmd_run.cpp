// quant run RECIPE.json: batch jobs (quantize, then optionally evaluate), each a subcommand run
// as a child process of this executable, validated in full before any job starts.
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "exit_codes.h"
#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/formats/codec.h"
#include "quant/io/hash.h"
#include "quant/io/io.h"
#include "quant/pipeline/eval.h"
#include "quant/pipeline/policy.h"
#include "quant/pipeline/recipe.h"

namespace quant::cli {

namespace {

using nlohmann::json;

struct Job {
  RecipeJob recipe;
  std::vector<std::string> args;       // after the subcommand name
  std::vector<std::string> eval_args;  // `eval` arguments after the model; empty: no eval
  std::string id;                      // a hash of the quantizing command (kRunJobIdEnv)
};

const std::map<std::string, void (*)(CLI::App&)>& methods() {
  static const std::map<std::string, void (*)(CLI::App&)> m = {
      {"rtn", register_rtn}, {"gptq", register_gptq}, {"awq", register_awq}, {"kmeans", register_kmeans}, {"gguf", register_gguf}};
  return m;
}

std::string value_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_integer()) return std::to_string(v.get<std::int64_t>());
  if (v.is_number()) return fmt::format("{}", v.get<double>());
  return v.dump();
}

// Appends `--key value` for one recipe field, checked against the subcommand's options.
void add_field(CLI::App* sub, const std::string& where, const std::string& key, const json& v, const fs::path& base,
               std::vector<std::string>& args) {
  std::string opt = "--";
  for (char c : key) opt += c == '_' ? '-' : c;
  const CLI::Option* o = sub->get_option_no_throw(opt);
  if (!o || opt == "--help" || opt == "--json") fail<InputError>("{} '{}' is not an option of quant {} (check the job and the recipe's defaults)", where, key, sub->get_name());
  auto path_like = [&](const std::string& s) {
    static const std::set<std::string> paths = {"--calib", "--calib-tokens", "--imatrix", "--dense-out", "--text", "--tokens", "--base"};
    if (!paths.count(opt) || s.empty() || fs::path(s).is_absolute()) return s;
    return (base / s).string();
  };
  if (v.is_boolean()) {
    if (o->get_expected_max() != 0) fail<InputError>("{}: '{}' takes a value, not true/false", where, key);
    if (v.get<bool>()) args.push_back(opt);
    return;
  }
  if (o->get_expected_max() == 0) fail<InputError>("{}: '{}' is a flag: use true or false", where, key);
  const json items = v.is_array() ? v : json::array({v});
  for (const auto& e : items) {
    if (!e.is_string() && !e.is_number()) fail<InputError>("{}: '{}' must be a string or a number (or a list of them)", where, key);
    args.push_back(opt);
    args.push_back(path_like(value_text(e)));
  }
}

// Lets CLI11 check every value (types, ranges) without running the command: the main app's
// parse-complete callback runs after the checks and before the subcommand's callback.
void check_values(CLI::App& app, const std::string& command, const std::vector<std::string>& args, const std::string& where) {
  struct Validated {};
  app.parse_complete_callback([] { throw Validated{}; });
  std::vector<std::string> argv = {"quant", command};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<const char*> cargv;
  for (const auto& s : argv) cargv.push_back(s.c_str());
  try {
    app.parse(static_cast<int>(cargv.size()), cargv.data());
  } catch (const Validated&) {
  } catch (const CLI::ParseError& e) {
    fail<InputError>("{}: {}", where, e.what());
  }
}

// The subcommand arguments of every job, each option checked by the subcommand's own parser.
std::vector<Job> load_recipe(const fs::path& path) {
  std::vector<std::string> names;
  for (const auto& [name, reg] : methods()) names.push_back(name);
  std::sort(names.begin(), names.end(), [](const std::string& x, const std::string& y) {
    static const std::vector<std::string> order = {"rtn", "gptq", "awq", "kmeans", "gguf"};
    return std::find(order.begin(), order.end(), x) < std::find(order.begin(), order.end(), y);
  });
  const fs::path base = path.parent_path();
  std::vector<Job> jobs;
  for (RecipeJob& rj : parse_recipe(path, names)) {
    Job job;
    job.recipe = rj;
    const std::string& where = rj.where;
    CLI::App app;
    methods().at(rj.method)(app);
    CLI::App* sub = app.get_subcommand(rj.method);
    job.args = {rj.model, "-o", rj.output, "--json"};
    for (const auto& [k, v] : rj.options.items()) {
      if (k == "rules") {
        if (!v.is_array()) fail<InputError>("{}: field 'rules' must be a list of \"REGEX=...\" strings", where);
        for (std::size_t j = 0; j < v.size(); ++j) {
          if (!v[j].is_string()) fail<InputError>("{}: rules[{}] must be a string", where, j);
          try {
            Rule::parse(v[j].get<std::string>());
          } catch (const Error& e) {
            fail<InputError>("{}: rules[{}]: {}", where, j, e.what());
          }
          job.args.push_back("--rule");
          job.args.push_back(v[j].get<std::string>());
        }
        continue;
      }
      add_field(sub, where + ": field", k, v, base, job.args);
    }
    check_values(app, rj.method, job.args, where);
    job.id = sha256_hex(json::array({rj.method, job.args}).dump()).substr(0, 16);
    if (!rj.eval.is_null()) {
      CLI::App eapp;
      register_eval(eapp);
      CLI::App* esub = eapp.get_subcommand("eval");
      job.eval_args = {rj.output, "--json"};
      for (const auto& [k, v] : rj.eval.items()) add_field(esub, fmt::format("{}: field eval", where), k, v, base, job.eval_args);
      check_values(eapp, "eval", job.eval_args, where + ": eval");
    }
    jobs.push_back(std::move(job));
  }
  return jobs;
}

struct Child {
  int rc = 0;
  std::string out;
};

// Runs this executable with `args` (and kRunJobIdEnv = `job_id`), stdout captured, stderr
// passed through.
Child run_self(const std::vector<std::string>& args, const std::string& job_id) {
  int fds[2];
  if (pipe(fds) != 0) fail<Error>("pipe: {}", std::strerror(errno));
  const pid_t pid = fork();
  if (pid < 0) fail<Error>("fork: {}", std::strerror(errno));
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    ::setenv(kRunJobIdEnv, job_id.c_str(), 1);
    std::vector<char*> argv;
    static std::string self = "quant";
    argv.push_back(self.data());
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv("/proc/self/exe", argv.data());
    _exit(127);
  }
  close(fds[1]);
  set_interrupt_child(pid);  // SIGINT/SIGTERM reach the running job too
  Child c;
  char buf[65536];
  ssize_t n;
  while ((n = read(fds[0], buf, sizeof buf)) > 0) c.out.append(buf, static_cast<std::size_t>(n));
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  set_interrupt_child(0);
  c.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  return c;
}

std::vector<std::string> global_args() {
  const GlobalOptions& g = global_options();
  std::vector<std::string> a;
  if (g.threads > 0) a = {"-t", std::to_string(g.threads)};
  if (g.verbose) a.push_back("-v");
  if (g.quiet) a.push_back("-q");
  return a;
}

}  // namespace

std::size_t validate_recipe(const fs::path& path) { return load_recipe(path).size(); }

namespace {

struct RunCliOptions {
  std::string recipe, report, shard, report_merge, junit;
  std::size_t shards = 0;
  bool keep_going = false, json = false, dry_run = false, list = false, force = false;
};

// The shard this worker runs: --shard, else the scheduler's environment, else all jobs.
Shard choose_shard(const RunCliOptions& o) {
  if (!o.shard.empty()) {
    if (o.shards != 0) fail<UsageError>("--shard K/N already gives the count; --shards is for JOB_COMPLETION_INDEX");
    return parse_shard(o.shard);
  }
  if (auto s = shard_from_environment(o.shards, [](const char* n) { return std::getenv(n); })) return *s;
  if (o.shards != 0) fail<UsageError>("--shards {} needs JOB_COMPLETION_INDEX (a Kubernetes Indexed Job) or use --shard K/N", o.shards);
  return Shard{0, 1, "all jobs (no --shard, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX)"};
}

// Writes --report and --junit, and prints the report (a table, or JSON with --json) when `print`.
void print_report(const RunCliOptions& o, const json& report, bool print = true) {
  if (!o.report.empty()) write_file_atomic(o.report, report.dump(2) + "\n");
  if (!o.junit.empty()) {
    StagedFile out(o.junit, OutputPolicy{o.force, false, {o.recipe}});
    const std::string xml = report_junit(report, o.recipe);
    out.file().write(xml.data(), static_cast<std::streamsize>(xml.size()));
    out.commit();
  }
  if (!print) return;
  if (o.json) std::cout << report.dump(2) << "\n";
  else std::cout << report_table(report);
}

// --list: every job with its shard (for N shards: --shard's, the environment's or 1).
void list_jobs(const RunCliOptions& o, const std::vector<Job>& jobs, const Shard& shard) {
  std::vector<RecipeJob> recipe;
  for (const Job& j : jobs) recipe.push_back(j.recipe);
  const std::vector<std::size_t> of = assign_shards(recipe, shard.count);
  json list = json::array();
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    list.push_back({{"shard", of[i]}, {"shards", shard.count}, {"name", recipe[i].name}, {"method", recipe[i].method},
                    {"model", recipe[i].model}, {"output", recipe[i].output}, {"job_id", jobs[i].id}});
  }
  if (o.json) {
    std::cout << list.dump(2) << "\n";
    return;
  }
  std::cout << fmt::format("{:<7} {:<24} {:<7} {}\n", "shard", "job", "method", "output");
  for (const auto& e : list) {
    std::cout << fmt::format("{:<7} {:<24} {:<7} {}\n", fmt::format("{}/{}", e["shard"].get<std::size_t>(), shard.count),
                             e["name"].get<std::string>(), e["method"].get<std::string>(), e["output"].get<std::string>());
  }
}

// --report-merge DIR: the shard reports (*.json) in DIR, merged in recipe order.
void merge(const RunCliOptions& o, const std::vector<Job>& jobs) {
  std::vector<RecipeJob> recipe;
  for (const Job& j : jobs) recipe.push_back(j.recipe);
  if (!fs::is_directory(o.report_merge)) fail<UsageError>("--report-merge {}: not a directory", o.report_merge);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(o.report_merge)) {
    if (e.is_regular_file() && e.path().extension() == ".json") files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::pair<std::string, json>> reports;
  for (const auto& f : files) {
    if (!o.report.empty() && fs::exists(o.report) && fs::equivalent(f, o.report)) continue;  // our own merged output
    json r;
    try {
      r = read_json_file(f);
    } catch (const Error& e) {
      log::warn("{}: not read ({}); left out", f.string(), e.what());
      continue;
    }
    if (!r.is_array()) {
      log::warn("{}: not a quant run report (a JSON array); left out", f.string());
      continue;
    }
    reports.emplace_back(f.string(), std::move(r));
  }
  log::info("--report-merge: {} report(s) in {}", reports.size(), o.report_merge);
  bool failed = false;
  const json merged = merge_reports(recipe, reports, failed);
  print_report(o, merged);
  if (failed) throw JobsFailed("one or more jobs did not succeed (or are in no report)");
}

// A dry run's estimate of a job with an eval covers the eval too: the eval's peak memory
// (pipeline/eval.h; the quantized model has the source's shapes) when it exceeds the
// quantization's, as `estimate.eval_peak_rss_bytes`. Its time is not estimated.
void add_eval_memory(json& report, const std::vector<RecipeJob>& recipe) {
  for (std::size_t i = 0; i < recipe.size() && i < report.size(); ++i) {
    const RecipeJob& rj = recipe[i];
    json& e = report[i];
    if (rj.eval.is_null() || !e.contains("estimate")) continue;
    const Model model = formats::open_model(rj.model);
    const std::int64_t ctx = rj.eval.contains("ctx") && rj.eval["ctx"].is_number_integer()
                                 ? rj.eval["ctx"].get<std::int64_t>()
                                 : std::min<std::int64_t>(2048, model.config().max_position_embeddings);
    const std::uint64_t mem = eval_memory_estimate(model, ctx, omp_get_max_threads());
    e["estimate"]["eval_peak_rss_bytes"] = mem;
    if (mem > e["estimate"].value("peak_rss_bytes", std::uint64_t{0})) e["estimate"]["peak_rss_bytes"] = mem;
  }
}

}  // namespace

void register_run(CLI::App& app) {
  auto o = std::make_shared<RunCliOptions>();
  auto* cmd = app.add_subcommand("run", "run the jobs of a recipe (JSON): quantize with per-tensor rules, then evaluate");
  cmd->add_option("recipe", o->recipe, "recipe file (docs/cli.md)")->required();
  cmd->add_flag("-k,--keep-going", o->keep_going, "run the remaining jobs after one fails");
  cmd->add_option("--report", o->report, "also write the JSON report to this file");
  cmd->add_option("--junit", o->junit, "also write the report as JUnit XML to this file");
  cmd->add_flag("-f,--force", o->force, "replace an existing --junit file that quant wrote");
  cmd->add_flag("--dry-run", o->dry_run, "validate the recipe and print each job's plan, size, peak memory and time estimates");
  cmd->add_flag("--json", o->json, "print the report as JSON on stdout instead of a table");
  cmd->add_option("--shard", o->shard, "run only shard K of N (0-based, K/N); default: from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX");
  cmd->add_option("--shards", o->shards, "the shard count with JOB_COMPLETION_INDEX (a Kubernetes Indexed Job's completions; or QUANT_SHARDS)");
  cmd->add_flag("--list", o->list, "print every job with its shard index and exit");
  cmd->add_option("--report-merge", o->report_merge, "merge the shard reports (*.json) in DIR into one report and exit (nothing runs)");
  cmd->callback([o] {
    const std::vector<Job> jobs = load_recipe(o->recipe);
    log::info("{}: {} job(s) validated", o->recipe, jobs.size());
    if (!o->junit.empty()) check_output(o->junit, OutputKind::file, OutputPolicy{o->force, false, {o->recipe}});
    if (!o->report.empty()) {  // shard reports usually go to a folder of their own (docs/cluster.md)
      check_output_inputs(o->report, {o->recipe});
      std::error_code ec;
      if (fs::path(o->report).has_parent_path()) fs::create_directories(fs::path(o->report).parent_path(), ec);
    }
    if (!o->report_merge.empty()) {
      if (o->list || o->dry_run || !o->shard.empty()) fail<UsageError>("--report-merge runs nothing: --list, --dry-run and --shard do not apply");
      merge(*o, jobs);
      return;
    }
    const Shard shard = choose_shard(*o);
    if (o->list) {
      list_jobs(*o, jobs, shard);
      return;
    }
    std::vector<RecipeJob> all;
    for (const Job& j : jobs) all.push_back(j.recipe);
    const std::vector<std::size_t> of = assign_shards(all, shard.count);
    std::vector<RecipeJob> recipe;
    std::map<std::string, const Job*> by_name;
    for (std::size_t i = 0; i < jobs.size(); ++i) {
      if (of[i] != shard.index) continue;
      recipe.push_back(jobs[i].recipe);
      by_name[jobs[i].recipe.name] = &jobs[i];
    }
    if (shard.count > 1) log::info("shard {}/{} ({}): {} of {} job(s)", shard.index, shard.count, shard.source, recipe.size(), jobs.size());
    auto child = [](std::vector<std::string> args, const std::string& id) {
      Child c = run_self(args, id);
      JobOutcome out;
      out.exit_code = c.rc;
      out.regressed = c.rc == kExitRegression;
      try {
        out.summary = json::parse(c.out);
      } catch (const json::exception&) {
      }
      return out;
    };
    auto quantize = [&](const RecipeJob& rj) {
      const Job& j = *by_name.at(rj.name);
      std::vector<std::string> args = global_args();
      args.push_back(rj.method);
      args.insert(args.end(), j.args.begin(), j.args.end());
      if (o->dry_run) args.push_back("--dry-run");
      return child(args, j.id);
    };
    auto evaluate = [&](const RecipeJob& rj) {
      const Job& j = *by_name.at(rj.name);
      std::vector<std::string> args = global_args();
      args.push_back("eval");
      args.insert(args.end(), j.eval_args.begin(), j.eval_args.end());
      return child(args, "");
    };
    BatchOptions bo;
    bo.keep_going = o->keep_going;
    bo.dry_run = o->dry_run;
    if (shard.count > 1) bo.shard = static_cast<long>(shard.index);
    bo.completed = [&](const RecipeJob& rj) -> json {
      const Job& j = *by_name.at(rj.name);
      if (quant_output_job_id(rj.output) != j.id) return json();
      if (fs::is_directory(rj.output)) return read_json_file(fs::path(rj.output) / "quant_summary.json");
      return json{{"bytes", fs::file_size(rj.output)}};
    };
    bool failed = false;
    json report = run_batch(recipe, bo, quantize, evaluate, failed);
    if (o->dry_run) add_eval_memory(report, recipe);
    const bool estimates = o->dry_run && !o->json;  // the table of estimates instead of statuses
    print_report(*o, report, !estimates);
    if (estimates) std::cout << estimates_table(report);
    if (failed) throw JobsFailed("one or more jobs failed");
  });
}

}  // namespace quant::cli
