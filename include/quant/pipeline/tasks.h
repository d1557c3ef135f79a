// Zero-shot multiple-choice tasks scored as lm-evaluation-harness scores them: each choice's
// log-likelihood given the context; acc by the largest log-likelihood, acc_norm by the largest
// log-likelihood per character of the continuation.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "quant/model/model.h"
#include "quant/model/tokenizer.h"

namespace quant {

namespace fs = std::filesystem;

// A task as text: the context, the choices, and lm-eval's target delimiter put between them
// (the choice's characters, for acc_norm, exclude it).
struct ChoiceText {
  std::string context;
  std::vector<std::string> continuations;
  std::string delimiter = " ";
  int label = 0;
};

// llama.cpp's HellaSwag text format (6 lines a task: "activity label: context", the gold index
// 0-3, four endings), as lm-eval's hellaswag task presents it: the endings after " ".
std::vector<ChoiceText> parse_hellaswag(const std::string& text, const std::string& source);
// One JSON object a line: {"context": str, "choices": [str, ...], "label": int} with an optional
// "target_delimiter" (default " ", lm-eval's); for Winogrande-style partial scoring the context
// differs per choice: {"contexts": [...], "continuation": str, "label": int}.
std::vector<ChoiceText> parse_mc_jsonl(const std::string& text, const std::string& source);

struct ChoiceTask {
  std::vector<std::vector<std::int32_t>> context;       // per choice (the same unless partial scoring)
  std::vector<std::vector<std::int32_t>> continuation;  // per choice
  std::vector<std::size_t> chars;                       // continuation length in characters (UTF-8 code points)
  int label = 0;
};

// lm-eval's _encode_pair: trailing spaces of the context move to the continuation; whole =
// encode(context + continuation), context_enc = encode(context), continuation_enc =
// whole[len(context_enc):]. No BOS unless `bos` ≥ 0.
std::vector<ChoiceTask> tokenize_tasks(const std::vector<ChoiceText>& tasks, const Tokenizer& tok, std::int32_t bos);

struct TaskOptions {
  std::int64_t max_length = 0;  // 0: the model context; longer inputs keep their last tokens (lm-eval)
};

struct TaskScores {
  std::vector<std::vector<double>> loglik;  // [task][choice]
};

// Log-likelihood of every continuation given its context.
TaskScores score_tasks(const Model& model, const std::vector<ChoiceTask>& tasks, const TaskOptions& options,
                       const std::function<void(std::int64_t, std::int64_t)>& progress = {});

struct TaskAccuracy {
  std::int64_t n = 0;
  double acc = 0, acc_stderr = 0;
  double acc_norm = 0, acc_norm_stderr = 0;
  std::vector<int> pred, pred_norm;  // per task
};
// acc and acc_norm with lm-eval's stderr (sample standard deviation / sqrt(n)); ties go to the
// first choice (numpy argmax).
TaskAccuracy task_accuracy(const std::vector<ChoiceTask>& tasks, const TaskScores& scores);

}  // namespace quant
