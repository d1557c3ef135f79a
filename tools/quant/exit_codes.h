// Process exit codes of the quant CLI (documented in docs/cli.md) and the errors only the CLI
// raises. The library throws quant::Error subclasses; exit_code() maps them here.
#pragma once

#include "quant/core/error.h"

namespace quant::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,    // a bug or an unexpected failure
  kExitUsage = 2,       // bad command-line values
  kExitInput = 3,       // bad input files (model, tokenizer, text, recipe)
  kExitRegression = 4,  // a quality gate (--max-ppl, --max-ppl-increase) was exceeded
  kExitIo = 5,          // a write failed (disk full, permissions)
  kExitJobs = 6,        // quant run: one or more jobs failed
  kExitNonFinite = 7,   // a gated metric (perplexity, KL) is NaN or infinite: fails every gate
  kExitInterrupted = 130,  // SIGINT/SIGTERM: partial output removed (128 + SIGINT, as shells report)
};

// A quality gate was exceeded (e.g. --max-ppl).
class RegressionError : public Error {
 public:
  using Error::Error;
};

// A metric a gate reads is not finite (NaN comparisons are false: without this, NaN passed).
class NonFiniteMetric : public Error {
 public:
  using Error::Error;
};

// Some jobs of a batch failed (each reported on its own).
class JobsFailed : public Error {
 public:
  using Error::Error;
};

inline int exit_code(const Error& e) {
  if (dynamic_cast<const UsageError*>(&e)) return kExitUsage;
  if (dynamic_cast<const InputError*>(&e)) return kExitInput;
  if (dynamic_cast<const IoError*>(&e)) return kExitIo;
  if (dynamic_cast<const Interrupted*>(&e)) return kExitInterrupted;
  if (dynamic_cast<const RegressionError*>(&e)) return kExitRegression;
  if (dynamic_cast<const NonFiniteMetric*>(&e)) return kExitNonFinite;
  if (dynamic_cast<const JobsFailed*>(&e)) return kExitJobs;
  return kExitInternal;
}

}  // namespace quant::cli
