// quant: quantize LLM checkpoints. See docs/cli.md.
#include <omp.h>

#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <string>

#include "commands.h"
#include "exit_codes.h"
#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/core/log.h"

namespace {

// Large matrices are fresh mmap'd memory: on 4 KiB pages every first touch faults, which costs
// about 3.5 ms per MB on the VMs we measured (a 254 MB Hessian buffer: 0.9 s before any
// arithmetic). glibc's malloc asks for transparent huge pages only with the tunable
// glibc.malloc.hugetlb=1, read at process start, so quant re-executes itself once with it when
// the kernel grants huge pages on request ("[madvise]"). QUANT_HUGEPAGES=0 turns this off.
// docs/performance.md has the measurements.
void reexec_with_huge_pages(char** argv) {
  if (const char* v = std::getenv("QUANT_HUGEPAGES"); v != nullptr) return;  // set by us, or by the user
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  const std::string mode{std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  setenv("QUANT_HUGEPAGES", "1", 1);
  if (mode.find("[madvise]") == std::string::npos) return;
  std::string tunables = std::getenv("GLIBC_TUNABLES") ? std::getenv("GLIBC_TUNABLES") : "";
  if (tunables.find("glibc.malloc.hugetlb") != std::string::npos) return;
  if (!tunables.empty()) tunables.push_back(':');
  tunables.append("glibc.malloc.hugetlb=1");
  setenv("GLIBC_TUNABLES", tunables.c_str(), 1);
  execv("/proc/self/exe", argv);  // returns only on failure: carry on without huge pages
}

}  // namespace

int main(int argc, char** argv) {
  using namespace quant;
  reexec_with_huge_pages(argv);
  // Past a file-size limit (ulimit -f), let write() fail with EFBIG — reported and cleaned up
  // like a full disk — instead of SIGXFSZ killing the process with partial files behind.
  std::signal(SIGXFSZ, SIG_IGN);
  // SIGINT/SIGTERM: the work stops at its next check, partial output is removed (a resume
  // journal stays) and quant exits 130. Repeated signals are the same request (GNU timeout and a
  // terminal signal the whole process group, so one stop arrives twice): cleanup always runs;
  // SIGKILL abandons at once (the next run on that output removes what was left).
  struct sigaction sa {};
  sa.sa_handler = [](int sig) { request_interrupt(sig); };
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  CLI::App app{"quant: quantize large language models (RTN, GPTQ, AWQ, K-means) on CPUs"};
  app.require_subcommand(1);
  // Global options also after the subcommand (`quant gptq MODEL --threads 2`).
  app.fallthrough();
  app.set_version_flag("--version", "quant 0.1.0");
  auto& g = cli::global_options();
  app.add_option("-t,--threads", g.threads, "worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("-v,--verbose", g.verbose, "debug logging on stderr");
  app.add_flag("-q,--quiet", g.quiet, "only warnings and errors on stderr; no progress bars");
  app.parse_complete_callback([&] {
    log::set_level(g.verbose ? log::Level::debug : g.quiet ? log::Level::warn : log::Level::info);
    if (g.threads > 0) omp_set_num_threads(g.threads);
  });
  cli::register_inspect(app);
  cli::register_eval(app);
  cli::register_rtn(app);
  cli::register_gptq(app);
  cli::register_awq(app);
  cli::register_kmeans(app);
  cli::register_gguf(app);
  cli::register_imatrix(app);
  cli::register_run(app);
  cli::register_check(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : cli::kExitUsage;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return cli::exit_code(e);
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return cli::kExitInternal;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: internal: %s\n", e.what());
    return cli::kExitInternal;
  }
  return cli::kExitOk;
}
