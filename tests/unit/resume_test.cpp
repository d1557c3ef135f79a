// Resuming a killed layer-sequential run: SIGKILL after a journaled layer, then the same
// command finishes with output byte-identical to an uninterrupted run.
#include <gtest/gtest.h>

#include <cstdlib>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using testing::TempDir;

struct KillAfterLayer {
  explicit KillAfterLayer(int layer) { setenv("QUANT_FAULT_KILL_AFTER_LAYER", std::to_string(layer).c_str(), 1); }
  ~KillAfterLayer() { unsetenv("QUANT_FAULT_KILL_AFTER_LAYER"); }
};

void expect_same_files(const fs::path& a, const fs::path& b) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(a)) {
    const std::string name = e.path().filename().string();
    if (name == "quant_summary.json") continue;  // holds the output path and the wall time
    ASSERT_TRUE(fs::exists(b / name)) << name;
    EXPECT_EQ(read_text_file(e.path()), read_text_file(b / name)) << name;
    ++n;
  }
  EXPECT_GE(n, 2);
}

class Resume : public ::testing::TestWithParam<std::string> {};

TEST_P(Resume, KilledRunResumesToIdenticalOutput) {
  const std::string method = GetParam();
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.layers = 4;
  spec.kv_heads = 4;
  testing::write_tiny_model(dir / "m", spec);
  std::string ids;
  for (int i = 0; i < 2000; ++i) ids += std::to_string((i * 29 + i / 5) % 96) + " ";
  write_file_atomic(dir / "ids.txt", ids);
  auto command = [&](int nsamples) {
    return method + " " + (dir / "m").string() + " --calib-tokens " + (dir / "ids.txt").string() + " --nsamples " +
           std::to_string(nsamples) + " --seqlen 64 " + (method == "kmeans" ? "-b 3 --format lut" : "-g 32") + " -o ";
  };
  const std::string args = command(8);
  auto r = testing::run_quant(args + (dir / "full").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const fs::path out = dir / "res";
  {
    KillAfterLayer kill(1);
    r = testing::run_quant(args + out.string());
  }
  EXPECT_NE(r.rc, 0);
  EXPECT_FALSE(fs::exists(out)) << "a killed run left a directory under the final name";
  ASSERT_TRUE(fs::exists(dir / "res.resume" / "state.json"));
  EXPECT_NE(read_text_file(dir / "res.resume" / "state.json").find("\"layers_done\": 2"), std::string::npos);
  // Different settings: refused, with the reason.
  r = testing::run_quant(command(7) + out.string());
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("different calibration"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // The same command: continues after layer 1 and matches the uninterrupted run.
  r = testing::run_quant(args + out.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("resuming"), std::string::npos) << r.err;
  expect_same_files(dir / "full", out);
  EXPECT_FALSE(fs::exists(dir / "res.resume"));
  EXPECT_FALSE(fs::exists(dir / "res.partial"));
}

INSTANTIATE_TEST_SUITE_P(Methods, Resume, ::testing::Values("gptq", "awq", "kmeans"));

TEST(Resume, NoResumeStartsAfresh) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.layers = 3;
  testing::write_tiny_model(dir / "m", spec);
  std::string ids;
  for (int i = 0; i < 1000; ++i) ids += std::to_string(i % 96) + " ";
  write_file_atomic(dir / "ids.txt", ids);
  const std::string args = "gptq " + (dir / "m").string() + " --calib-tokens " + (dir / "ids.txt").string() + " --nsamples 4 --seqlen 32 -g 32 -o " +
                           (dir / "o").string();
  {
    KillAfterLayer kill(0);
    EXPECT_NE(testing::run_quant(args).rc, 0);
  }
  ASSERT_TRUE(fs::exists(dir / "o.resume"));
  const auto r = testing::run_quant(args + " -b 8 --no-resume");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.err.find("resuming"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "o.resume"));
}

}  // namespace
}  // namespace quant
