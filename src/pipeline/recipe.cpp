#include "quant/pipeline/recipe.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <numeric>
#include <set>

#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/core/strings.h"
#include "quant/io/io.h"

namespace quant {

using nlohmann::json;

std::vector<RecipeJob> parse_recipe(const fs::path& path, const std::vector<std::string>& methods) {
  const json r = read_json_file(path);
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
  const std::string known = fmt::format("{}", fmt::join(methods, ", "));
  std::vector<RecipeJob> jobs;
  std::set<std::string> names, outputs;
  for (std::size_t i = 0; i < r["jobs"].size(); ++i) {
    const json& raw = r["jobs"][i];
    if (!raw.is_object()) fail<InputError>("{}: jobs[{}] must be an object", path.string(), i);
    json spec = defaults;
    for (const auto& [k, v] : raw.items()) spec[k] = v;
    RecipeJob job;
    if (spec.contains("name") && !spec["name"].is_string()) {
      fail<InputError>("{}: jobs[{}]: field 'name' must be a string, got {}", path.string(), i, spec["name"].dump());
    }
    job.name = spec.value("name", fmt::format("job{}", i + 1));
    job.where = fmt::format("{}: job '{}' (jobs[{}])", path.string(), job.name, i);
    const std::string& where = job.where;
    if (!names.insert(job.name).second) fail<InputError>("{}: the name is used by an earlier job", where);
    if (!spec.contains("method") || !spec["method"].is_string()) fail<InputError>("{}: needs \"method\" ({})", where, known);
    job.method = spec["method"].get<std::string>();
    if (std::find(methods.begin(), methods.end(), job.method) == methods.end()) {
      fail<InputError>("{}: field 'method': unknown method '{}' ({})", where, job.method, known);
    }
    if (!spec.contains("model") || !spec["model"].is_string()) fail<InputError>("{}: needs \"model\" (a model directory)", where);
    job.model = resolve(spec["model"].get<std::string>());
    if (!fs::is_regular_file(fs::path(job.model) / "config.json")) fail<InputError>("{}: field 'model': {} has no config.json", where, job.model);
    if (!spec.contains("output") || !spec["output"].is_string()) fail<InputError>("{}: needs \"output\"", where);
    job.output = resolve(spec["output"].get<std::string>());
    if (!outputs.insert(job.output).second) fail<InputError>("{}: field 'output': {} is written by an earlier job", where, job.output);
    for (const auto& [k, v] : spec.items()) {
      if (k != "name" && k != "method" && k != "model" && k != "output" && k != "eval") job.options[k] = v;
    }
    if (spec.contains("eval") && !spec["eval"].is_null()) {  // null: no eval (overrides defaults)
      if (!spec["eval"].is_object()) fail<InputError>("{}: field 'eval' must be an object (text or tokens, ctx, ...)", where);
      if (job.method == "gguf") fail<InputError>("{}: field 'eval': quant eval reads checkpoint directories, not GGUF files", where);
      job.eval = spec["eval"];
    }
    jobs.push_back(std::move(job));
  }
  // No job may write over what it or an earlier job reads (a later job reading an earlier job's
  // output is a chain and fine), nor inside another job's output.
  std::vector<fs::path> all_outputs;
  for (std::size_t i = 0; i < jobs.size(); ++i) {
    all_outputs.emplace_back(jobs[i].output);
    std::vector<fs::path> models;
    for (std::size_t j = 0; j < jobs.size(); ++j) {
      if (j <= i || resolve_output_path(jobs[j].model) != resolve_output_path(jobs[i].output)) models.emplace_back(jobs[j].model);
    }
    try {
      check_output_inputs(jobs[i].output, models);
    } catch (const UsageError& e) {
      fail<InputError>("{}: field 'output': {}", jobs[i].where, e.what());
    }
  }
  try {
    check_distinct_outputs(all_outputs, path.string());
  } catch (const UsageError& e) {
    fail<InputError>("{}", e.what());
  }
  return jobs;
}

json run_batch(const std::vector<RecipeJob>& jobs, const BatchOptions& o, const std::function<JobOutcome(const RecipeJob&)>& quantize,
               const std::function<JobOutcome(const RecipeJob&)>& evaluate, bool& failed) {
  json report = json::array();
  failed = false;
  for (const RecipeJob& job : jobs) {
    json entry = {{"name", job.name}, {"method", job.method}, {"output", job.output}};
    if (failed && !o.keep_going) {
      entry["status"] = "skipped";
      report.push_back(entry);
      continue;
    }
    if (o.shard >= 0) entry["shard"] = o.shard;
    auto take_figures = [&entry](const json& r) {
      if (!r.is_object()) return;
      if (r.contains("bpw_quantized")) entry["bpw"] = r["bpw_quantized"];
      if (r.contains("estimated_bytes")) entry["estimated_bytes"] = r["estimated_bytes"];
      if (r.contains("estimate")) entry["estimate"] = r["estimate"];
      if (r.contains("bytes_out")) entry["bytes"] = r["bytes_out"];
      if (r.contains("bytes")) entry["bytes"] = r["bytes"];
    };
    const json earlier = !o.dry_run && o.completed ? o.completed(job) : json();
    if (earlier.is_object()) {
      log::info("job '{}': {} is complete from an earlier run of this job; not run again", job.name, job.output);
      entry["exit_code"] = 0;
      take_figures(earlier);
      entry["status"] = "done";
    } else {
      log::info("job '{}': quant {} …", job.name, job.method);
      const auto start = std::chrono::steady_clock::now();
      const JobOutcome q = quantize(job);
      check_interrupted();  // the job got the signal too; stop the batch
      entry["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      entry["exit_code"] = q.exit_code;
      if (q.exit_code != 0) {
        entry["status"] = "failed";
        failed = true;
        log::warn("job '{}' failed (exit {})", job.name, q.exit_code);
        report.push_back(entry);
        continue;
      }
      take_figures(q.summary);
      entry["status"] = o.dry_run ? "planned" : "ok";
    }
    if (!job.eval.is_null() && !o.dry_run) {
      const JobOutcome e = evaluate(job);
      if (e.summary.is_object() && e.summary.contains("ppl")) entry["ppl"] = e.summary["ppl"];
      if (e.exit_code != 0) {
        entry["status"] = e.regressed ? "regressed" : "eval failed";
        entry["exit_code"] = e.exit_code;
        failed = true;
      }
    }
    report.push_back(entry);
  }
  return report;
}

std::string report_table(const json& report) {
  std::string s = fmt::format("{:<24} {:<7} {:<10} {:>7} {:>10} {:>8}  {}\n", "job", "method", "status", "bpw", "ppl", "seconds", "output");
  for (const auto& e : report) {
    s += fmt::format("{:<24} {:<7} {:<10} {:>7} {:>10} {:>8}  {}\n", e["name"].get<std::string>(), e["method"].get<std::string>(),
                     e["status"].get<std::string>(), e.contains("bpw") ? fmt::format("{:.3f}", e["bpw"].get<double>()) : "-",
                     e.contains("ppl") ? fmt::format("{:.4f}", e["ppl"].get<double>()) : "-",
                     e.contains("seconds") ? fmt::format("{:.1f}", e["seconds"].get<double>()) : "-", e["output"].get<std::string>());
  }
  return s;
}

std::string estimates_table(const json& report) {
  std::string s = fmt::format("{:<24} {:<7} {:>14} {:>12} {:>10}  {}\n", "job", "method", "est. peak MB", "est. time s", "size MB", "output");
  double peak = 0, total = 0;
  for (const auto& e : report) {
    const json est = e.value("estimate", json::object());
    const double p = est.value("peak_rss_bytes", 0.0) / 1e6, t = est.value("seconds", 0.0);
    const double size = e.value("estimated_bytes", e.value("bytes", 0.0)) / 1e6;
    peak = std::max(peak, p);
    total += t;
    s += fmt::format("{:<24} {:<7} {:>14} {:>12} {:>10}  {}\n", e.value("name", ""), e.value("method", ""),
                     est.empty() ? "-" : fmt::format("{:.0f}", p), est.empty() ? "-" : fmt::format("{:.0f}", t),
                     size > 0 ? fmt::format("{:.1f}", size) : "-", e.value("output", ""));
  }
  const auto secs = static_cast<long long>(std::ceil(total * 1.5)) + 60;  // a minute for start-up and the model's first read
  s += fmt::format("one worker running these in turn: peak {:.0f} MB, {:.0f} s; Slurm request with a 1.5x margin: --mem={:.0f}M --time={:02}:{:02}:{:02}\n",
                   peak, total, std::ceil(peak * 1.5 / 1.048576), secs / 3600, secs / 60 % 60, secs % 60);
  return s;
}

namespace {

std::size_t parse_count(const std::string& text, const std::string& what) {
  std::size_t pos = 0;
  unsigned long long v = 0;
  try {
    v = std::stoull(text, &pos);
  } catch (const std::exception&) {
    pos = 0;
  }
  if (pos == 0 || pos != text.size() || text[0] == '-') fail<UsageError>("{}: '{}' is not a non-negative integer", what, text);
  return static_cast<std::size_t>(v);
}

bool succeeded(const json& entry) {
  const std::string s = entry.value("status", "");
  return s == "ok" || s == "done" || s == "planned";
}

}  // namespace

Shard parse_shard(const std::string& text) {
  const auto slash = text.find('/');
  if (slash == std::string::npos) fail<UsageError>("--shard {}: expected K/N (0-based index K of N shards, e.g. 0/4)", text);
  Shard s;
  s.index = parse_count(text.substr(0, slash), "--shard index");
  s.count = parse_count(text.substr(slash + 1), "--shard count");
  if (s.count == 0 || s.index >= s.count) fail<UsageError>("--shard {}: the index must be 0 … {} (0-based)", text, s.count == 0 ? 0 : s.count - 1);
  s.source = "--shard " + text;
  return s;
}

std::optional<Shard> shard_from_environment(std::size_t count, const std::function<const char*(const char*)>& env) {
  auto get = [&](const char* name) -> std::optional<std::string> {
    const char* v = env(name);
    if (!v || !*v) return std::nullopt;
    return std::string(v);
  };
  Shard s;
  if (const auto id = get("SLURM_ARRAY_TASK_ID")) {
    const auto n = get("SLURM_ARRAY_TASK_COUNT");
    const auto min = get("SLURM_ARRAY_TASK_MIN");
    const auto step = get("SLURM_ARRAY_TASK_STEP");
    if (!n || !min) fail<UsageError>("SLURM_ARRAY_TASK_ID={} is set but SLURM_ARRAY_TASK_COUNT/SLURM_ARRAY_TASK_MIN are not; pass --shard K/N", *id);
    if (step && parse_count(*step, "SLURM_ARRAY_TASK_STEP") != 1) {
      fail<UsageError>("the Slurm array has step {} (SLURM_ARRAY_TASK_STEP): quant run needs a contiguous array (--array=0-{}) or --shard K/N", *step,
                       *n);
    }
    const std::size_t task = parse_count(*id, "SLURM_ARRAY_TASK_ID"), lo = parse_count(*min, "SLURM_ARRAY_TASK_MIN");
    s.count = parse_count(*n, "SLURM_ARRAY_TASK_COUNT");
    if (task < lo || task - lo >= s.count || s.count == 0) {
      fail<UsageError>("SLURM_ARRAY_TASK_ID={} does not lie in the array {}…{} (a sparse --array list?): pass --shard K/N", task, lo, lo + s.count - 1);
    }
    s.index = task - lo;
    s.source = fmt::format("SLURM_ARRAY_TASK_ID={} of SLURM_ARRAY_TASK_MIN={}, SLURM_ARRAY_TASK_COUNT={}", task, lo, s.count);
    return s;
  }
  if (const auto idx = get("JOB_COMPLETION_INDEX")) {
    std::string count_from = "--shards";
    if (count == 0) {
      const auto n = get("QUANT_SHARDS");
      if (!n) fail<UsageError>("JOB_COMPLETION_INDEX={} is set but not the number of shards: set QUANT_SHARDS to the Job's completions or pass --shards N", *idx);
      count = parse_count(*n, "QUANT_SHARDS");
      count_from = "QUANT_SHARDS";
    }
    s.index = parse_count(*idx, "JOB_COMPLETION_INDEX");
    s.count = count;
    if (s.count == 0 || s.index >= s.count) fail<UsageError>("JOB_COMPLETION_INDEX={} is not below the shard count {} ({})", s.index, s.count, count_from);
    s.source = fmt::format("JOB_COMPLETION_INDEX={} of {}={}", s.index, count_from, s.count);
    return s;
  }
  return std::nullopt;
}

std::vector<std::size_t> assign_shards(const std::vector<RecipeJob>& jobs, std::size_t count) {
  if (count == 0) fail<UsageError>("the shard count must be positive");
  // Union-find over chains: job j reading job i's output joins i's group.
  std::vector<std::size_t> parent(jobs.size());
  std::iota(parent.begin(), parent.end(), std::size_t{0});
  auto root = [&](std::size_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  std::map<fs::path, std::size_t> writer;
  for (std::size_t j = 0; j < jobs.size(); ++j) writer.emplace(resolve_output_path(jobs[j].output), j);
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const auto it = writer.find(resolve_output_path(jobs[j].model));
    if (it != writer.end() && it->second != j) {
      const std::size_t a = root(j), b = root(it->second);
      parent[std::max(a, b)] = std::min(a, b);  // the group's root is its first job
    }
  }
  std::map<std::size_t, std::size_t> group_shard;
  std::vector<std::size_t> shard(jobs.size());
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const std::size_t r = root(j);
    const auto it = group_shard.find(r);
    shard[j] = it != group_shard.end() ? it->second : group_shard.emplace(r, group_shard.size() % count).first->second;
  }
  return shard;
}

json merge_reports(const std::vector<RecipeJob>& jobs, const std::vector<std::pair<std::string, json>>& reports, bool& failed) {
  failed = false;
  json merged = json::array();
  std::set<std::pair<std::string, std::string>> known;
  for (const RecipeJob& job : jobs) {
    known.emplace(job.name, job.output);
    json best;
    for (const auto& [file, report] : reports) {
      for (const json& e : report) {
        if (!e.is_object() || e.value("name", "") != job.name || e.value("output", "") != job.output) continue;
        if (best.is_null() || succeeded(e) || !succeeded(best)) {
          best = e;
          best["report"] = file;
        }
      }
    }
    if (best.is_null()) best = {{"name", job.name}, {"method", job.method}, {"output", job.output}, {"status", "missing"}};
    failed = failed || !succeeded(best);
    merged.push_back(best);
  }
  for (const auto& [file, report] : reports) {
    for (const json& e : report) {
      if (e.is_object() && !known.count({e.value("name", ""), e.value("output", "")})) {
        log::warn("{}: job '{}' ({}) is not in the recipe; left out of the merged report", file, e.value("name", "?"), e.value("output", "?"));
      }
    }
  }
  return merged;
}

std::string report_junit(const json& report, const std::string& suite) {
  std::size_t failures = 0, skipped = 0;
  double total = 0;
  std::string cases;
  for (const json& e : report) {
    const std::string status = e.value("status", "");
    const double secs = e.value("seconds", 0.0);
    total += secs;
    cases += fmt::format("    <testcase classname=\"quant.run.{}\" name=\"{}\" time=\"{:.3f}\">\n", xml_escape(e.value("method", "")),
                         xml_escape(e.value("name", "")), secs);
    if (status == "skipped") {
      ++skipped;
      cases += "      <skipped/>\n";
    } else if (!succeeded(e)) {
      ++failures;
      const std::string msg = status == "missing" ? "in no shard report: the job did not run (or its shard's report is missing)"
                                                  : fmt::format("{} (exit {})", status, e.value("exit_code", 0));
      cases += fmt::format("      <failure message=\"{}\" type=\"{}\"/>\n", xml_escape(msg), xml_escape(status));
    }
    cases += "    </testcase>\n";
  }
  return fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n<testsuites name=\"quant run\" tests=\"{}\" failures=\"{}\" skipped=\"{}\">\n"
      "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3f}\">\n{}  </testsuite>\n</testsuites>\n",
      kQuantReportMarker, report.size(), failures, skipped, xml_escape(suite), report.size(), failures, skipped, total, cases);
}

}  // namespace quant
