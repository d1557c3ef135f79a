// A progress bar with ETA on stderr; silent when stderr is not a terminal or with -q.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace quant::cli {

class ProgressBar {
 public:
  ProgressBar(std::string label, std::int64_t total);
  ~ProgressBar();
  void update(std::int64_t done, const std::string& note = "");
  void finish();

 private:
  std::string label_;
  std::int64_t total_;
  bool enabled_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace quant::cli
