#include "quant/core/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>

namespace quant::log {
namespace {
std::atomic<Level> g_level{Level::info};

spdlog::logger& logger() {
  static auto instance = [] {
    auto l = spdlog::stderr_color_mt("quant");
    l->set_pattern("%^%l%$: %v");
    l->set_level(spdlog::level::trace);
    return l;
  }();
  return *instance;
}
}  // namespace

void set_level(Level level) { g_level = level; }
Level level() { return g_level; }

void write(Level lvl, const std::string& message) {
  switch (lvl) {
    case Level::debug: logger().debug(message); break;
    case Level::info: logger().info(message); break;
    case Level::warn: logger().warn(message); break;
    case Level::error: logger().error(message); break;
    case Level::off: break;
  }
}

}  // namespace quant::log
