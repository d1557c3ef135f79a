// Every `quant …` command shown in README.md and docs/*.md runs as written, and the recipe
// example of docs/cli.md runs as `jobs.json`: in a sandbox holding tiny fixtures under the
// names the docs use (models/wiki-llama-5m, MODEL, models/llama, c4.txt, wiki.test.raw,
// data/…). Commands that build, install or call make are not run here (CI runs them).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <regex>
#include <sstream>

#include "fixtures.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using testing::TempDir;

const fs::path kSource = fs::path(QUANT_FUZZ_DIR).parent_path().parent_path();

struct DocRun {
  int rc = -1;
  std::string out;
};

// Runs a documented command line (starting with "quant ") in `dir`.
DocRun run_in(const fs::path& dir, const std::string& line) {
  const std::string log = (dir / ".log").string();
  const std::string cmd = "cd '" + dir.string() + "' && " + std::string(QUANT_BINARY) + line.substr(5) + " >" + log + " 2>&1";
  const int status = std::system(cmd.c_str());
  DocRun r;
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text_file(log);
  return r;
}

// The `quant …` lines of the sh code blocks and the json blocks of a Markdown file.
void blocks(const fs::path& md, std::vector<std::string>& commands, std::vector<std::string>& json) {
  std::istringstream in(read_text_file(md));
  std::string line, lang, body;
  bool inside = false;
  while (std::getline(in, line)) {
    if (line.rfind("```", 0) == 0) {
      if (!inside) {
        lang = line.substr(3);
        body.clear();
      } else if (lang == "json") {
        json.push_back(body);
      }
      inside = !inside;
      continue;
    }
    if (!inside) continue;
    body += line + "\n";
    if ((lang == "sh" || lang == "bash") && line.rfind("quant ", 0) == 0) {
      const auto comment = line.find(" #");  // a trailing comment (no command here quotes a '#')
      commands.push_back(line.substr(0, comment));
    }
  }
}

#if defined(__SANITIZE_ADDRESS__)
#define QUANT_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QUANT_SANITIZED 1
#endif
#endif

TEST(DocsCommands, EveryDocumentedCommandRunsAsWritten) {
#ifdef QUANT_SANITIZED
  // It checks the docs, not memory safety, and its ~40 s of real calibration take 15 minutes
  // under ASan; the normal build runs it.
  GTEST_SKIP() << "documentation commands are checked by the unsanitized build";
#endif
  TempDir box;
  testing::TinyModelSpec spec;
  spec.kv_heads = 4;
  spec.ctx = 1024;
  spec.hidden = 128;  // whole groups of 128 (the AWQ format has no per-row fallback)
  spec.intermediate = 256;
  spec.heads = 4;
  spec.layers = 1;
  spec.weight_scale = 0.02f;  // with an untied lm_head of that scale: perplexity ≈ the vocabulary size (96), under the example's gate of 120
  spec.tied = false;
  for (const char* m : {"models/wiki-llama-5m", "MODEL", "models/llama"}) {
    testing::write_tiny_model(box / m, spec);
    testing::write_tiny_tokenizer(box / m, spec.vocab);
  }
  // Text the tiny byte-level tokenizer covers (printable ASCII and spaces), one token a byte.
  std::string text;
  for (int i = 0; text.size() < 24000; ++i) text += "the cat sat on mat " + std::to_string(i * 7919 % 1000) + " ";
  fs::create_directories(box / "data");
  for (const char* t : {"c4.txt", "wiki.test.raw", "data/c4.txt", "data/wikitext2-test.txt"}) write_file_atomic(box / t, text);

  std::vector<std::string> commands, json;
  std::vector<fs::path> docs = {kSource / "README.md"};
  for (const auto& e : fs::directory_iterator(kSource / "docs")) {
    if (e.path().extension() == ".md") docs.push_back(e.path());
  }
  std::sort(docs.begin() + 1, docs.end());
  for (const auto& d : docs) {
    std::vector<std::string> js;
    blocks(d, commands, js);
    if (d.filename() == "cli.md") {
      for (const auto& j : js) {
        if (j.find("\"jobs\"") != std::string::npos) write_file_atomic(box / "jobs.json", j);
      }
    }
  }
  ASSERT_TRUE(fs::exists(box / "jobs.json")) << "docs/cli.md lost its recipe example";
  ASSERT_GE(commands.size(), 15u);
  // QUANT_DOCS_SANDBOX=DIR: keep a copy of the sandbox there (to rerun a failing command by hand).
  struct Keep {
    const fs::path& from;
    ~Keep() {
      if (const char* to = std::getenv("QUANT_DOCS_SANDBOX")) fs::copy(from, to, fs::copy_options::recursive | fs::copy_options::overwrite_existing);
    }
  } keep{box.path()};
  for (const auto& c : commands) {
    const auto t0 = std::chrono::steady_clock::now();
    const DocRun r = run_in(box.path(), c);
    std::fprintf(stderr, "%5.1fs  %s\n", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), c.c_str());
    EXPECT_EQ(r.rc, 0) << c << "\n" << r.out;
  }
}

}  // namespace
}  // namespace quant
