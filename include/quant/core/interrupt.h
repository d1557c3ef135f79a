// Cooperative interruption. The tool's SIGINT/SIGTERM handler calls request_interrupt() (it is
// async-signal-safe: it only stores the signal and forwards it to a registered child process);
// long loops call check_interrupted() between units of work — a layer stage, a linear, an eval
// batch, a GGUF tensor, 64k JSON tokens — which throws Interrupted, so partial output is removed
// as for any error while a resume journal (written only at layer ends) stays usable. Repeated
// signals (GNU timeout signals the process and then its group; a terminal's Ctrl-C reaches a
// whole foreground group) are one request: the cleanup always runs.
#pragma once

namespace quant {

void request_interrupt(int sig) noexcept;
void check_interrupted();
bool interrupt_requested() noexcept;
// The child process that request_interrupt forwards the signal to (0: none).
void set_interrupt_child(int pid) noexcept;

}  // namespace quant
