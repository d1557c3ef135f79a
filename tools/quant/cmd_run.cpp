// quant run RECIPE.json: batch jobs (quantize, then optionally evaluate), each a subcommand run
// as a child process of this executable, validated in full before any job starts.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/core/log.h"
#include "quant/pipeline/policy.h"

namespace quant::cli {

namespace {

using nlohmann::json;

struct Job {
  std::string name, method;
  std::vector<std::string> args;       // after the subcommand name
  std::vector<std::string> eval_args;  // `eval` arguments after the model; empty: no eval
  std::string output;
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
  if (!o || opt == "--help" || opt == "--json") fail<InputError>("{}: '{}' is not an option of quant {}", where, key, sub->get_name());
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

std::vector<Job> load_recipe(const fs::path& path) {
  json r;
  try {
    r = json::parse(read_text_file(path));
  } catch (const json::exception& e) {
    fail<InputError>("{}: not valid JSON: {}", path.string(), e.what());
  }
  if (!r.is_object() || !r.contains("jobs") || !r["jobs"].is_array() || r["jobs"].empty()) {
    fail<InputError>("{}: a recipe is an object with a non-empty \"jobs\" array", path.string());
  }
  const json defaults = r.value("defaults", json::object());
  if (!defaults.is_object()) fail<InputError>("{}: \"defaults\" must be an object", path.string());
  for (const auto& [k, v] : r.items()) {
    if (k != "jobs" && k != "defaults") fail<InputError>("{}: unknown top-level field '{}' (jobs, defaults)", path.string(), k);
  }
  const fs::path base = path.parent_path();
  auto resolve = [&](const std::string& s) { return fs::path(s).is_absolute() || s.empty() ? s : (base / s).string(); };
  std::vector<Job> jobs;
  std::set<std::string> names, outputs;
  for (std::size_t i = 0; i < r["jobs"].size(); ++i) {
    const json& raw = r["jobs"][i];
    if (!raw.is_object()) fail<InputError>("{}: jobs[{}] must be an object", path.string(), i);
    json spec = defaults;
    for (const auto& [k, v] : raw.items()) spec[k] = v;
    Job job;
    job.name = spec.value("name", fmt::format("job{}", i + 1));
    const std::string where = fmt::format("{}: job '{}' (jobs[{}])", path.string(), job.name, i);
    if (!names.insert(job.name).second) fail<InputError>("{}: the name is used by an earlier job", where);
    if (!spec.contains("method") || !spec["method"].is_string()) fail<InputError>("{}: needs \"method\" (rtn, gptq, awq, kmeans, gguf)", where);
    job.method = spec["method"].get<std::string>();
    const auto m = methods().find(job.method);
    if (m == methods().end()) fail<InputError>("{}: field 'method': unknown method '{}' (rtn, gptq, awq, kmeans, gguf)", where, job.method);
    if (!spec.contains("model") || !spec["model"].is_string()) fail<InputError>("{}: needs \"model\" (a model directory)", where);
    const std::string model = resolve(spec["model"].get<std::string>());
    if (!fs::is_regular_file(fs::path(model) / "config.json")) fail<InputError>("{}: field 'model': {} has no config.json", where, model);
    if (!spec.contains("output") || !spec["output"].is_string()) fail<InputError>("{}: needs \"output\"", where);
    job.output = resolve(spec["output"].get<std::string>());
    if (!outputs.insert(job.output).second) fail<InputError>("{}: field 'output': {} is written by an earlier job", where, job.output);
    CLI::App app;
    m->second(app);
    CLI::App* sub = app.get_subcommand(job.method);
    job.args = {model, "-o", job.output, "--json"};
    for (const auto& [k, v] : spec.items()) {
      if (k == "name" || k == "method" || k == "model" || k == "output" || k == "eval") continue;
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
      add_field(sub, fmt::format("{}: field", where), k, v, base, job.args);
    }
    check_values(app, job.method, job.args, where);
    if (spec.contains("eval") && !spec["eval"].is_null()) {  // null: no eval (overrides defaults)
      const json& ev = spec["eval"];
      if (!ev.is_object()) fail<InputError>("{}: field 'eval' must be an object (text or tokens, ctx, ...)", where);
      if (job.method == "gguf") fail<InputError>("{}: field 'eval': quant eval reads checkpoint directories, not GGUF files", where);
      CLI::App eapp;
      register_eval(eapp);
      CLI::App* esub = eapp.get_subcommand("eval");
      job.eval_args = {job.output, "--json"};
      for (const auto& [k, v] : ev.items()) add_field(esub, fmt::format("{}: field eval", where), k, v, base, job.eval_args);
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

// Runs this executable with `args`, stdout captured, stderr passed through.
Child run_self(const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) fail<Error>("pipe: {}", std::strerror(errno));
  const pid_t pid = fork();
  if (pid < 0) fail<Error>("fork: {}", std::strerror(errno));
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
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

void register_run(CLI::App& app) {
  struct Options {
    std::string recipe, report;
    bool keep_going = false, json = false, dry_run = false;
  };
  auto o = std::make_shared<Options>();
  auto* cmd = app.add_subcommand("run", "run the jobs of a recipe (JSON): quantize with per-tensor rules, then evaluate");
  cmd->add_option("recipe", o->recipe, "recipe file (docs/cli.md)")->required();
  cmd->add_flag("-k,--keep-going", o->keep_going, "run the remaining jobs after one fails");
  cmd->add_option("--report", o->report, "also write the JSON report to this file");
  cmd->add_flag("--dry-run", o->dry_run, "validate the recipe and print each job's plan");
  cmd->add_flag("--json", o->json, "print the report as JSON on stdout instead of a table");
  cmd->callback([o] {
    const std::vector<Job> jobs = load_recipe(o->recipe);
    log::info("{}: {} job(s) validated", o->recipe, jobs.size());
    json report = json::array();
    bool failed = false;
    for (const Job& job : jobs) {
      json entry = {{"name", job.name}, {"method", job.method}, {"output", job.output}};
      if (failed && !o->keep_going) {
        entry["status"] = "skipped";
        report.push_back(entry);
        continue;
      }
      log::info("job '{}': quant {} …", job.name, job.method);
      const auto start = std::chrono::steady_clock::now();
      std::vector<std::string> args = global_args();
      args.push_back(job.method);
      args.insert(args.end(), job.args.begin(), job.args.end());
      if (o->dry_run) args.push_back("--dry-run");
      Child c = run_self(args);
      check_interrupted();  // the job got the signal too; stop the batch
      entry["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      entry["exit_code"] = c.rc;
      if (c.rc != 0) {
        entry["status"] = "failed";
        failed = true;
        log::warn("job '{}' failed (exit {})", job.name, c.rc);
        report.push_back(entry);
        continue;
      }
      try {
        const json r = json::parse(c.out);
        if (r.contains("bpw_quantized")) entry["bpw"] = r["bpw_quantized"];
        if (r.contains("estimated_bytes")) entry["estimated_bytes"] = r["estimated_bytes"];
        if (r.contains("bytes_out")) entry["bytes"] = r["bytes_out"];
        if (r.contains("bytes")) entry["bytes"] = r["bytes"];
      } catch (const json::exception&) {
      }
      entry["status"] = o->dry_run ? "planned" : "ok";
      if (!job.eval_args.empty() && !o->dry_run) {
        std::vector<std::string> ea = global_args();
        ea.push_back("eval");
        ea.insert(ea.end(), job.eval_args.begin(), job.eval_args.end());
        Child e = run_self(ea);
        try {
          const json r = json::parse(e.out);
          entry["ppl"] = r["ppl"];
        } catch (const json::exception&) {
        }
        if (e.rc != 0) {
          entry["status"] = e.rc == kExitRegression ? "regressed" : "eval failed";
          entry["exit_code"] = e.rc;
          failed = true;
        }
      }
      report.push_back(entry);
    }
    if (!o->report.empty()) write_file_atomic(o->report, report.dump(2) + "\n");
    if (o->json) {
      std::cout << report.dump(2) << "\n";
    } else {
      std::cout << fmt::format("{:<24} {:<7} {:<10} {:>7} {:>10} {:>8}  {}\n", "job", "method", "status", "bpw", "ppl", "seconds", "output");
      for (const auto& e : report) {
        std::cout << fmt::format("{:<24} {:<7} {:<10} {:>7} {:>10} {:>8}  {}\n", e["name"].get<std::string>(), e["method"].get<std::string>(),
                                 e["status"].get<std::string>(), e.contains("bpw") ? fmt::format("{:.3f}", e["bpw"].get<double>()) : "-",
                                 e.contains("ppl") ? fmt::format("{:.4f}", e["ppl"].get<double>()) : "-",
                                 e.contains("seconds") ? fmt::format("{:.1f}", e["seconds"].get<double>()) : "-", e["output"].get<std::string>());
      }
    }
    if (failed) throw JobsFailed("one or more jobs failed");
  });
}

}  // namespace quant::cli
