// Every quantizing command writes the same bytes whatever the thread count. The model is just
// large enough (256 × 512 linears) that the row-parallel paths actually split.
#include <gtest/gtest.h>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

struct ThreadsCli : ::testing::TestWithParam<const char*> {
  static void SetUpTestSuite() {
    dir = new TempDir();
    testing::TinyModelSpec spec;
    spec.hidden = 256;
    spec.intermediate = 512;
    spec.heads = 8;
    spec.kv_heads = 4;
    spec.layers = 1;
    spec.dtype = DType::F16;
    testing::write_tiny_model(*dir / "m", spec);
    testing::write_tiny_tokenizer(*dir / "m", spec.vocab);
    std::string t;
    for (int i = 0; i < 3000; ++i) t += std::to_string((i * 31 + i / 7) % 96) + " ";
    write_file_atomic(*dir / "calib.txt", t);
  }
  static void TearDownTestSuite() { delete dir; }
  static TempDir* dir;
};
TempDir* ThreadsCli::dir = nullptr;

TEST_P(ThreadsCli, SameBytesForOneAndThreeThreads) {
  const std::string args = GetParam();
  const bool rtn = args.rfind("rtn", 0) == 0;  // the only one without calibration
  const std::string calib = rtn ? " " : " --calib-tokens " + (*dir / "calib.txt").string() + " --nsamples 4 --seqlen 64 ";
  const bool gguf = args.rfind("gguf", 0) == 0;
  std::string bytes[2];
  for (int i = 0; i < 2; ++i) {
    const fs::path out = *dir / (std::string(gguf ? "g" : "q") + std::to_string(i) + (gguf ? ".gguf" : ""));
    const auto r = run_quant(std::string(i == 0 ? "-t 1 " : "-t 3 ") + args + " " + (*dir / "m").string() + calib +
                             "-o " + out.string() + " --force");
    ASSERT_EQ(r.rc, 0) << args << ": " << r.err;
    bytes[i] = read_text_file(gguf ? out : out / "model.safetensors");
  }
  EXPECT_FALSE(bytes[0].empty());
  EXPECT_TRUE(bytes[0] == bytes[1]) << args << ": outputs differ between 1 and 3 threads";
}

INSTANTIATE_TEST_SUITE_P(Commands, ThreadsCli,
                         ::testing::Values("rtn -b 3 -g 64", "gptq -g 32 --act-order", "awq -g 64", "kmeans -b 3",
                                           "kmeans --solver lloyd -g 128", "gguf -t q4_k_m", "gguf -t q4_0"));

}  // namespace
}  // namespace quant
