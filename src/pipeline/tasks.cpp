#include "quant/pipeline/tasks.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "quant/core/error.h"
#include "quant/core/interrupt.h"
#include "quant/core/json.h"
#include "quant/model/forward.h"
#include "quant/model/weights.h"

namespace quant {

namespace {

std::vector<std::string> split_lines(const std::string& text) {
  std::vector<std::string> lines;
  std::string line;
  std::istringstream in(text);
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

std::size_t code_points(const std::string& s) {
  std::size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

}  // namespace

std::vector<ChoiceText> parse_hellaswag(const std::string& text, const std::string& source) {
  const auto lines = split_lines(text);
  if (lines.empty() || lines.size() % 6 != 0) {
    fail("{}: HellaSwag text needs 6 lines a task (context, gold index, four endings); found {} lines", source, lines.size());
  }
  std::vector<ChoiceText> out;
  for (std::size_t i = 0; i < lines.size(); i += 6) {
    ChoiceText t;
    t.context = lines[i];
    const std::string& g = lines[i + 1];
    if (g.size() != 1 || g[0] < '0' || g[0] > '3') fail("{}: line {}: gold index must be 0-3, found '{}'", source, i + 2, g);
    t.label = g[0] - '0';
    for (std::size_t k = 0; k < 4; ++k) t.continuations.push_back(lines[i + 2 + k]);
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<ChoiceText> parse_mc_jsonl(const std::string& text, const std::string& source) {
  std::vector<ChoiceText> out;
  const auto lines = split_lines(text);
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", source, i + 1);
    const nlohmann::json j = parse_json(lines[i], where);
    if (!j.is_object() || !j.contains("label") || !j["label"].is_number_integer()) fail("{}: needs an integer \"label\"", where);
    ChoiceText t;
    t.label = j["label"].get<int>();
    if (j.contains("target_delimiter")) {
      if (!j["target_delimiter"].is_string()) fail("{}: \"target_delimiter\" must be a string", where);
      t.delimiter = j["target_delimiter"].get<std::string>();
    }
    if (j.contains("contexts")) {  // partial scoring: one context per choice, one continuation
      if (!j["contexts"].is_array() || !j.contains("continuation") || !j["continuation"].is_string()) {
        fail("{}: \"contexts\" needs an array of strings and a string \"continuation\"", where);
      }
      for (const auto& c : j["contexts"]) {
        if (!c.is_string()) fail("{}: \"contexts\" must hold strings", where);
        t.continuations.push_back(j["continuation"].get<std::string>());
      }
      t.context = "\x01";  // marker: per-choice contexts follow
      for (const auto& c : j["contexts"]) t.context += c.get<std::string>() + "\x01";
    } else {
      if (!j.contains("context") || !j["context"].is_string() || !j.contains("choices") || !j["choices"].is_array()) {
        fail("{}: needs \"context\" (string) and \"choices\" (array of strings), or \"contexts\" and \"continuation\"", where);
      }
      t.context = j["context"].get<std::string>();
      for (const auto& c : j["choices"]) {
        if (!c.is_string()) fail("{}: \"choices\" must hold strings", where);
        t.continuations.push_back(c.get<std::string>());
      }
    }
    if (t.continuations.size() < 2) fail("{}: a task needs at least two choices", where);
    if (t.label < 0 || t.label >= static_cast<int>(t.continuations.size())) {
      fail("{}: label {} is not a choice index (0-{})", where, t.label, t.continuations.size() - 1);
    }
    out.push_back(std::move(t));
  }
  if (out.empty()) fail("{}: no tasks", source);
  return out;
}

std::vector<ChoiceTask> tokenize_tasks(const std::vector<ChoiceText>& tasks, const Tokenizer& tok, std::int32_t bos) {
  std::vector<ChoiceTask> out;
  out.reserve(tasks.size());
  for (const ChoiceText& t : tasks) {
    std::vector<std::string> contexts;
    if (!t.context.empty() && t.context[0] == '\x01') {
      std::string rest = t.context.substr(1);
      for (std::size_t at; (at = rest.find('\x01')) != std::string::npos; rest = rest.substr(at + 1)) contexts.push_back(rest.substr(0, at));
    } else {
      contexts.assign(t.continuations.size(), t.context);
    }
    ChoiceTask c;
    c.label = t.label;
    for (std::size_t k = 0; k < t.continuations.size(); ++k) {
      std::string context = contexts[k], cont = t.delimiter + t.continuations[k];
      // lm-eval _encode_pair: trailing whitespace of the context belongs to the continuation.
      const std::size_t keep = context.find_last_not_of(' ') == std::string::npos ? 0 : context.find_last_not_of(' ') + 1;
      cont = context.substr(keep) + cont;
      context.resize(keep);
      std::vector<std::int32_t> whole = tok.encode(context + cont), ctx = tok.encode(context);
      if (bos >= 0) {
        whole.insert(whole.begin(), bos);
        ctx.insert(ctx.begin(), bos);
      }
      if (ctx.size() >= whole.size()) fail("task {}: choice {} encodes to no tokens after its context", out.size(), k);
      c.context.push_back(ctx);
      c.continuation.emplace_back(whole.begin() + static_cast<std::ptrdiff_t>(ctx.size()), whole.end());
      c.chars.push_back(code_points(t.continuations[k]));
    }
    out.push_back(std::move(c));
  }
  return out;
}

TaskScores score_tasks(const Model& model, const std::vector<ChoiceTask>& tasks, const TaskOptions& o,
                       const std::function<void(std::int64_t, std::int64_t)>& progress) {
  const ModelConfig& c = model.config();
  const std::int64_t max_len = o.max_length > 0 ? std::min(o.max_length, c.max_position_embeddings) : c.max_position_embeddings;
  const HeadWeights head = load_head(model, true);
  LayerCache cache(model);
  const RopeTable rope = build_rope(c, max_len);
  TaskScores s;
  s.loglik.resize(tasks.size());
  constexpr std::size_t kBatch = 16;  // tasks per pass over the layers
  for (std::size_t t0 = 0; t0 < tasks.size(); t0 += kBatch) {
    check_interrupted();
    const std::size_t t1 = std::min(tasks.size(), t0 + kBatch);
    // lm-eval: inp = (context + continuation)[-(max_length + 1):][:-1]
    std::vector<std::vector<std::int32_t>> inputs;
    std::vector<std::pair<std::size_t, std::size_t>> owner;  // (task, choice)
    for (std::size_t t = t0; t < t1; ++t) {
      for (std::size_t k = 0; k < tasks[t].continuation.size(); ++k) {
        std::vector<std::int32_t> all = tasks[t].context[k];
        all.insert(all.end(), tasks[t].continuation[k].begin(), tasks[t].continuation[k].end());
        if (static_cast<std::int64_t>(all.size()) > max_len + 1) all.erase(all.begin(), all.end() - (max_len + 1));
        all.pop_back();
        inputs.push_back(std::move(all));
        owner.emplace_back(t, k);
      }
    }
    std::vector<Mat> hs;
    for (const auto& in : inputs) hs.push_back(embed_tokens(head, in));
    for (int l = 0; l < c.n_layers; ++l) decoder_layer_forward_batch(c, cache.get(l), rope, hs);
    std::vector<double> ll(inputs.size());
#pragma omp parallel for schedule(dynamic, 1)
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const auto [t, k] = owner[i];
      const auto& cont = tasks[t].continuation[k];
      const Mat logits = final_logits(c, head, hs[i]);
      const Eigen::Index first = logits.rows() - static_cast<Eigen::Index>(cont.size());
      double sum = 0;
      for (std::size_t j = 0; j < cont.size(); ++j) {
        const auto row = logits.row(first + static_cast<Eigen::Index>(j)).cast<double>();
        const double mx = row.maxCoeff();
        const double lse = mx + std::log((row.array() - mx).exp().sum());
        sum += row(cont[j]) - lse;
      }
      ll[i] = sum;
    }
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      auto& v = s.loglik[owner[i].first];
      if (v.size() <= owner[i].second) v.resize(owner[i].second + 1);
      v[owner[i].second] = ll[i];
    }
    if (progress) progress(static_cast<std::int64_t>(t1), static_cast<std::int64_t>(tasks.size()));
  }
  return s;
}

TaskAccuracy task_accuracy(const std::vector<ChoiceTask>& tasks, const TaskScores& scores) {
  TaskAccuracy a;
  a.n = static_cast<std::int64_t>(tasks.size());
  double hits = 0, hits_norm = 0;
  for (std::size_t t = 0; t < tasks.size(); ++t) {
    const auto& ll = scores.loglik[t];
    int best = 0, best_norm = 0;
    for (std::size_t k = 1; k < ll.size(); ++k) {
      if (ll[k] > ll[static_cast<std::size_t>(best)]) best = static_cast<int>(k);
      const auto bn = static_cast<std::size_t>(best_norm);
      if (ll[k] / static_cast<double>(tasks[t].chars[k]) > ll[bn] / static_cast<double>(tasks[t].chars[bn])) best_norm = static_cast<int>(k);
    }
    a.pred.push_back(best);
    a.pred_norm.push_back(best_norm);
    hits += best == tasks[t].label;
    hits_norm += best_norm == tasks[t].label;
  }
  const double n = static_cast<double>(a.n);
  a.acc = hits / n;
  a.acc_norm = hits_norm / n;
  // lm-eval mean_stderr: sample standard deviation (n − 1) / sqrt(n) = sqrt(p(1 − p)/(n − 1)).
  auto se = [n](double p) { return n > 1 ? std::sqrt(p * (1 - p) / (n - 1)) : 0.0; };
  a.acc_stderr = se(a.acc);
  a.acc_norm_stderr = se(a.acc_norm);
  return a;
}

}  // namespace quant
