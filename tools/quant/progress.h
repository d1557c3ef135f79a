// A progress bar with ETA on stderr; silent when stderr is not a terminal or with -q.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
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

// A step callback that creates the bar on its first step (when the total is known).
class LazyProgress {
 public:
  explicit LazyProgress(std::string label) : label_(std::move(label)) {}
  std::function<void(std::int64_t, std::int64_t, const std::string&)> callback() {
    return [this](std::int64_t done, std::int64_t total, const std::string& what) {
      if (!bar_) bar_ = std::make_unique<ProgressBar>(label_, total);
      bar_->update(done, what);
    };
  }
  void finish() {
    if (bar_) bar_->finish();
  }

 private:
  std::string label_;
  std::unique_ptr<ProgressBar> bar_;
};

}  // namespace quant::cli
