// quant eval's options and the pieces its two modes share (perplexity in cmd_eval.cpp, zero-shot
// tasks in cmd_eval_tasks.cpp): the JUnit report.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "quant/pipeline/eval.h"

namespace quant::cli {

struct EvalCliOptions {
  std::string model;
  std::string text;
  std::string tokens;
  std::string tokenizer;
  std::string base;
  std::string protocol = "gptq";
  std::string preset;  // --preset wikitext2|ptb|c4|c4-new: build --text as the papers' code does
  std::int64_t ctx = 0;
  std::int64_t max_windows = 0;
  std::int64_t limit_bytes = 0;
  double max_ppl = 0;
  double max_ppl_increase = -1;
  double gate_sigmas = 0;  // --max-ppl-increase fails only when the increase exceeds the limit by this many standard errors
  std::string junit;
  std::string save_logits;
  std::string base_logits;
  int logits_k = 1024;
  std::vector<std::string> task;  // NAME FILE
  std::int64_t max_tasks = 0;
  std::string task_details;
  double max_acc_drop = -1;  // points of acc_norm below the base's
  bool force = false;
  bool json = false;
  bool no_memory_check = false;
};

// One (name, failure message) per gate; an empty message passed.
using GateResults = std::vector<std::pair<std::string, std::string>>;

// JUnit XML (the schema Jenkins, GitLab and GitHub test reporters read): one <testcase> per gate,
// a <failure> when it failed; a non-finite metric fails every gate.
void write_junit(const EvalCliOptions& o, const GateResults& gates, const std::string& non_finite, const EvalResult& r);

// quant eval MODEL --task hellaswag|mc FILE: zero-shot multiple choice (docs/cli.md).
void run_task_eval(const EvalCliOptions& o);

}  // namespace quant::cli
