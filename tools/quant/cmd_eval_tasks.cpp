// quant eval --task (zero-shot multiple choice) and the JUnit report both eval modes write.
#include <fmt/format.h>

#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>

#include "eval_cli.h"
#include "exit_codes.h"
#include "progress.h"
#include "quant/core/error.h"
#include "quant/core/log.h"
#include "quant/core/strings.h"
#include "quant/formats/codec.h"
#include "quant/io/hash.h"
#include "quant/io/io.h"
#include "quant/model/tokenizer.h"
#include "quant/pipeline/tasks.h"

namespace quant::cli {

void write_junit(const EvalCliOptions& o, const GateResults& gates, const std::string& non_finite, const EvalResult& r) {
  std::size_t failures = 0;
  std::string cases;
  for (const auto& [name, msg] : gates) {
    const std::string m = non_finite.empty() ? msg : non_finite;
    failures += !m.empty();
    cases += fmt::format("    <testcase classname=\"quant.eval\" name=\"{}\" time=\"{:.3f}\">\n", xml_escape(name), r.seconds);
    if (!m.empty()) cases += fmt::format("      <failure message=\"{}\" type=\"regression\"/>\n", xml_escape(m));
    cases += "    </testcase>\n";
  }
  const std::string xml = fmt::format(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}\n<testsuites name=\"quant eval\" tests=\"{}\" failures=\"{}\">\n"
      "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" time=\"{:.3f}\">\n"
      "    <properties><property name=\"ppl\" value=\"{:.6f}\"/><property name=\"ppl_stderr\" value=\"{:.6f}\"/>{}</properties>\n"
      "{}  </testsuite>\n</testsuites>\n",
      kQuantReportMarker, gates.size(), failures, xml_escape(o.model), gates.size(), failures, r.seconds, r.ppl, r.ppl_stderr,
      r.has_base ? fmt::format("<property name=\"base_ppl\" value=\"{:.6f}\"/><property name=\"kl_mean\" value=\"{:.6f}\"/>", r.base_ppl, r.kl_mean) : "",
      cases);
  StagedFile out(o.junit, OutputPolicy{o.force, false, {o.model, o.base, o.text, o.tokens, o.tokenizer}});
  out.file().write(xml.data(), xml.size());
  out.commit();
}

void run_task_eval(const EvalCliOptions& o) {
  const std::string& kind = o.task[0];
  const std::string& file = o.task[1];
  if (kind != "hellaswag" && kind != "mc") fail<UsageError>("--task must be hellaswag or mc (JSONL), got '{}'", kind);
  if (o.max_acc_drop >= 0 && o.base.empty()) fail<UsageError>("--max-acc-drop needs --base MODEL");
  if (!o.text.empty() || !o.tokens.empty() || o.max_ppl > 0 || o.max_ppl_increase >= 0) {
    fail<UsageError>("--task scores multiple choice; --text, --tokens and the perplexity gates do not apply");
  }
  const std::vector<fs::path> inputs = {o.model, o.base, file, o.tokenizer};
  if (!o.junit.empty()) check_output(o.junit, OutputKind::file, OutputPolicy{o.force, false, inputs});
  if (!o.task_details.empty()) check_output(o.task_details, OutputKind::file, OutputPolicy{o.force, false, inputs});
  const std::string text = read_text_file(file, true);
  std::vector<ChoiceText> raw = kind == "hellaswag" ? parse_hellaswag(text, file) : parse_mc_jsonl(text, file);
  if (o.max_tasks > 0 && static_cast<std::size_t>(o.max_tasks) < raw.size()) raw.resize(static_cast<std::size_t>(o.max_tasks));
  const Model model = formats::open_model(o.model, true);
  std::optional<Model> base;
  if (!o.base.empty()) base.emplace(formats::open_model(o.base, true));
  const std::unique_ptr<Tokenizer> tok = o.tokenizer.empty() ? Tokenizer::load(o.model) : Tokenizer::load_file(o.tokenizer);
  const std::vector<ChoiceTask> tasks = tokenize_tasks(raw, *tok, -1);  // lm-eval: no BOS
  log::info("{}: {} tasks from {} ({})", kind, tasks.size(), file, tok->kind());
  auto score = [&](const Model& m, const char* what) {
    std::unique_ptr<ProgressBar> pb;
    TaskScores s = score_tasks(m, tasks, TaskOptions{o.ctx}, [&](std::int64_t done, std::int64_t total) {
      if (!pb) pb = std::make_unique<ProgressBar>(what, total);
      pb->update(done);
    });
    if (pb) pb->finish();
    return s;
  };
  const TaskScores s = score(model, "tasks");
  const TaskAccuracy a = task_accuracy(tasks, s);
  nlohmann::ordered_json j;
  j["schema"] = "quant.eval/1";
  j["model"] = o.model;
  j["task"] = kind;
  j["task_file_sha256"] = sha256_hex(text);
  j["n"] = a.n;
  j["acc"] = a.acc;
  j["acc_stderr"] = a.acc_stderr;
  j["acc_norm"] = a.acc_norm;
  j["acc_norm_stderr"] = a.acc_norm_stderr;
  log::info("{}: acc {:.4f} ± {:.4f}, acc_norm {:.4f} ± {:.4f} over {} tasks", kind, a.acc, a.acc_stderr, a.acc_norm, a.acc_norm_stderr, a.n);
  GateResults gates;
  if (base) {
    const TaskAccuracy b = task_accuracy(tasks, score(*base, "base tasks"));
    j["base"] = o.base;
    j["base_acc"] = b.acc;
    j["base_acc_norm"] = b.acc_norm;
    log::info("base: acc {:.4f}, acc_norm {:.4f}", b.acc, b.acc_norm);
    if (o.max_acc_drop >= 0) {
      const double drop = 100.0 * (b.acc_norm - a.acc_norm);
      gates.emplace_back("max-acc-drop", drop > o.max_acc_drop ? fmt::format("acc_norm {:.4f} is {:.2f} points below the base's {:.4f} (limit {})",
                                                                              a.acc_norm, drop, b.acc_norm, o.max_acc_drop)
                                                               : "");
    }
  }
  std::string gate;
  for (const auto& g : gates) {
    if (!g.second.empty()) gate = g.second;
  }
  j["gate"] = gates.empty() ? "none" : gate.empty() ? "pass" : "fail";
  if (!gates.empty()) {
    nlohmann::ordered_json gj = nlohmann::ordered_json::array();
    for (const auto& [name, msg] : gates) gj.push_back({{"name", name}, {"pass", msg.empty()}, {"message", msg}});
    j["gates"] = gj;
  }
  if (!o.task_details.empty()) {  // per task: tokens and log-likelihoods, for checking against another scorer
    nlohmann::json d = nlohmann::json::array();
    for (std::size_t t = 0; t < tasks.size(); ++t) {
      d.push_back({{"label", tasks[t].label}, {"context", tasks[t].context}, {"continuation", tasks[t].continuation},
                   {"chars", tasks[t].chars}, {"loglik", s.loglik[t]}, {"pred", a.pred[t]}, {"pred_norm", a.pred_norm[t]}});
    }
    StagedFile out(o.task_details, OutputPolicy{o.force, false, inputs});
    const std::string body = d.dump() + "\n";
    out.file().write(body.data(), body.size());
    out.commit();
  }
  if (!o.junit.empty()) {
    EvalResult r;
    write_junit(o, gates, "", r);
  }
  if (o.json) std::cout << j.dump(2) << "\n";
  else fmt::print("acc {:.4f} acc_norm {:.4f}\n", a.acc, a.acc_norm);
  if (!gate.empty()) throw RegressionError(gate);
}

}  // namespace quant::cli
