#include "quant/core/interrupt.h"

#include <signal.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdlib>

#include "quant/core/error.h"

namespace quant {

namespace {
volatile std::sig_atomic_t g_interrupt_signal = 0;
volatile std::sig_atomic_t g_interrupt_child = 0;
}  // namespace

void request_interrupt(int sig) noexcept {
  // Only the first signal is forwarded: a child in the same process group already got the
  // terminal's or timeout's copy, and one request is enough.
  if (g_interrupt_signal != 0) return;
  g_interrupt_signal = sig;
  if (g_interrupt_child > 0) ::kill(static_cast<pid_t>(g_interrupt_child), sig);
}

void set_interrupt_child(int pid) noexcept { g_interrupt_child = pid; }

bool interrupt_requested() noexcept { return g_interrupt_signal != 0; }

void check_interrupted() {
  // Fault injection for the interruption tests: SIGTERM to ourselves at the Nth check.
  static const long fault_at = [] {
    const char* e = std::getenv("QUANT_FAULT_SIGTERM_AT");
    return e ? std::atol(e) : 0L;
  }();
  static std::atomic<long> calls = 0;
  // QUANT_FAULT_SIGNALS=K: K signals at once, as GNU timeout (process, then group) sends them.
  static const long fault_count = [] {
    const char* e = std::getenv("QUANT_FAULT_SIGNALS");
    return e ? std::max(1L, std::atol(e)) : 1L;
  }();
  if (fault_at > 0 && ++calls == fault_at) {
    for (long i = 0; i < fault_count; ++i) std::raise(SIGTERM);
  }
  if (const int sig = g_interrupt_signal) {
    throw Interrupted(fmt::format("interrupted by {}: stopped and removed the partial output", sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal"));
  }
}

}  // namespace quant
