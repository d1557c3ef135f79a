// Wall time per named phase, for "where does the time go" logs.
#pragma once

#include <chrono>
#include <map>
#include <string>
#include <type_traits>

namespace quant {

struct PhaseTimer {
  std::map<std::string, double> seconds;

  template <typename F>
  auto time(const std::string& phase, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    struct Stop {
      PhaseTimer& t;
      const std::string& phase;
      std::chrono::steady_clock::time_point t0;
      ~Stop() { t.seconds[phase] += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); }
    } stop{*this, phase, t0};
    return f();
  }
  // "phase 1.2s; phase 0.3s;"
  std::string summary() const;
};

}  // namespace quant
