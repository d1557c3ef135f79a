// SIGINT/SIGTERM: quant stops at its next check, removes partial output, exits 130; GPTQ keeps
// its resume journal and the same command then finishes. The signal is raised by fault
// injection (QUANT_FAULT_SIGTERM_AT=N: SIGTERM to itself at the Nth check), through the real
// handler.
#include <gtest/gtest.h>

#include <cstdlib>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

struct Interrupt : ::testing::Test {
  TempDir dir;
  std::string model, calib;
  void SetUp() override {
    testing::TinyModelSpec spec;
    spec.kv_heads = 4;
    spec.layers = 3;
    testing::write_tiny_model(dir / "m", spec);
    model = (dir / "m").string();
    std::string t;
    for (int i = 0; i < 600; ++i) t += std::to_string((i * 13 + 5) % 96) + " ";
    write_file_atomic(dir / "calib.txt", t);
    calib = (dir / "calib.txt").string();
  }
  testing::CommandResult run_with_fault(const std::string& args, int at) {
    setenv("QUANT_FAULT_SIGTERM_AT", std::to_string(at).c_str(), 1);
    auto r = run_quant(args);
    unsetenv("QUANT_FAULT_SIGTERM_AT");
    return r;
  }
};

TEST_F(Interrupt, RtnStopsAndRemovesPartialOutput) {
  const std::string out = (dir / "q").string();
  const auto r = run_with_fault("rtn " + model + " -o " + out + " -g 32", 5);
  EXPECT_EQ(r.rc, 130) << r.err;
  EXPECT_NE(r.err.find("error: interrupted by SIGTERM"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".partial"));
  // Without the signal the same command succeeds.
  EXPECT_EQ(run_quant("rtn " + model + " -o " + out + " -g 32").rc, 0);
}

TEST_F(Interrupt, GptqKeepsItsJournalAndTheSameCommandFinishes) {
  const std::string out = (dir / "q").string();
  const std::string cmd = "gptq " + model + " -o " + out + " -g 32 --calib-tokens " + calib + " --nsamples 8 --seqlen 64";
  // Layer 0 has 4 stage checks and 7 linear checks: the 16th check falls inside layer 1.
  const auto r = run_with_fault(cmd, 16);
  EXPECT_EQ(r.rc, 130) << r.err;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".partial"));
  EXPECT_TRUE(fs::exists(out + ".resume/state.json"));
  const auto again = run_quant(cmd);
  EXPECT_EQ(again.rc, 0) << again.err;
  EXPECT_NE(again.err.find("resum"), std::string::npos) << again.err;
  EXPECT_TRUE(fs::exists(out + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(out + ".resume"));
}

TEST_F(Interrupt, EvalStopsWithExit130) {
  const auto r = run_with_fault("eval " + model + " --tokens " + calib + " --ctx 16", 1);
  EXPECT_EQ(r.rc, 130) << r.err;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

}  // namespace
}  // namespace quant
