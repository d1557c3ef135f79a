// Error types of the quant library.
//
// Two tiers, as in faiss: invariants are asserted; bad input (files, CLI values, configs,
// recipes) throws a quant::Error subclass whose message names the file, the tensor, what was
// expected and what was found. The library never prints and never exits; `main` turns an Error
// into `error: <message>` and an exit code (tools/quant/exit_codes.h maps the classes to them).
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace quant {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// A value given on the command line (or in a recipe) is out of range or inconsistent.
class UsageError : public Error {
 public:
  using Error::Error;
};

// An input file is malformed, inconsistent or unsupported.
class InputError : public Error {
 public:
  using Error::Error;
};

// Writing output failed.
class IoError : public Error {
 public:
  using Error::Error;
};

// SIGINT or SIGTERM arrived (see request_interrupt in io.h).
class Interrupted : public Error {
 public:
  using Error::Error;
};

template <typename E = InputError, typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw E(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace quant
