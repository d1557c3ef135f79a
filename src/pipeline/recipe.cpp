#include "quant/pipeline/recipe.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <set>

#include "quant/core/error.h"
#include "quant/core/log.h"
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
    const json& r = q.summary;
    if (r.is_object()) {
      if (r.contains("bpw_quantized")) entry["bpw"] = r["bpw_quantized"];
      if (r.contains("estimated_bytes")) entry["estimated_bytes"] = r["estimated_bytes"];
      if (r.contains("bytes_out")) entry["bytes"] = r["bytes_out"];
      if (r.contains("bytes")) entry["bytes"] = r["bytes"];
    }
    entry["status"] = o.dry_run ? "planned" : "ok";
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

}  // namespace quant
