// Error types of the quant library.
//
// Two tiers, as in faiss: invariants are asserted; bad input (files, CLI values, configs,
// recipes) throws a quant::Error subclass whose message names the file, the tensor, what was
// expected and what was found. The library never prints and never exits; `main` turns an Error
// into `error: <message>` and the exit code below.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace quant {

// Process exit codes, documented in docs/cli.md.
enum ExitCode : int {
  kExitOk = 0,
  kExitInternal = 1,    // a bug or an unexpected failure
  kExitUsage = 2,       // bad command-line values
  kExitInput = 3,       // bad input files (model, tokenizer, text, recipe)
  kExitRegression = 4,  // a quality gate (--max-ppl, --max-ppl-increase) was exceeded
  kExitIo = 5,          // a write failed (disk full, permissions)
  kExitJobs = 6,        // quant run: one or more jobs failed
  kExitInterrupted = 130,  // SIGINT/SIGTERM: partial output removed (128 + SIGINT, as shells report)
};

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
  virtual int exit_code() const { return kExitInternal; }
};

// A value given on the command line (or in a recipe) is out of range or inconsistent.
class UsageError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitUsage; }
};

// An input file is malformed, inconsistent or unsupported.
class InputError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitInput; }
};

// Writing output failed.
class IoError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitIo; }
};

// A quality gate was exceeded (e.g. --max-ppl).
class RegressionError : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitRegression; }
};

// Some jobs of a batch failed (each reported on its own).
class JobsFailed : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitJobs; }
};

// SIGINT or SIGTERM arrived (see request_interrupt in io.h).
class Interrupted : public Error {
 public:
  using Error::Error;
  int exit_code() const override { return kExitInterrupted; }
};

template <typename E = InputError, typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw E(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace quant
