// Calibration windows: random windows while the text holds nsamples·seqlen tokens; a shorter
// text is cut into its disjoint windows, so no token is drawn twice (and fewer windows are used).
#include <gtest/gtest.h>

#include <string>

#include "fixtures.h"
#include "quant/io/io.h"
#include "quant/model/calibration.h"

namespace quant {
namespace {

using testing::TempDir;

struct CalibFixture {
  TempDir dir;
  Model model;
  fs::path ids;
  explicit CalibFixture(int n_tokens) : model(make(dir)) {
    std::string text;
    for (int i = 0; i < n_tokens; ++i) text += std::to_string(i % 96) + " ";
    ids = dir / "ids.txt";
    write_file_atomic(ids, text);
  }
  static Model make(const TempDir& d) {
    testing::write_tiny_model(d / "m", testing::TinyModelSpec{});
    return Model::open(d / "m");
  }
};

TEST(CalibrationWindows, ShortTextGivesItsDisjointWindows) {
  CalibFixture f(1050);
  CalibOptions o;
  o.tokens = f.ids;
  o.nsamples = 50;  // 50 × 100 tokens > 1050
  o.seqlen = 100;
  const auto w = load_calibration(f.model, o, nullptr);
  ASSERT_EQ(w.size(), 10u) << "1050 tokens fill 10 windows of 100";
  for (std::size_t s = 0; s < w.size(); ++s) {
    ASSERT_EQ(w[s].size(), 100u);
    for (std::size_t t = 0; t < 100; ++t) ASSERT_EQ(w[s][t], static_cast<std::int32_t>((s * 100 + t) % 96)) << s << "," << t;
  }
}

TEST(CalibrationWindows, LongTextKeepsRandomWindows) {
  CalibFixture f(5000);
  CalibOptions o;
  o.tokens = f.ids;
  o.nsamples = 20;  // 2000 ≤ 5000 tokens
  o.seqlen = 100;
  o.seed = 3;
  const auto a = load_calibration(f.model, o, nullptr);
  ASSERT_EQ(a.size(), 20u);
  int aligned = 0;  // windows equal to the s-th disjoint window
  for (std::size_t s = 0; s < a.size(); ++s) aligned += a[s][0] == static_cast<std::int32_t>((s * 100) % 96) && a[s][1] == static_cast<std::int32_t>((s * 100 + 1) % 96);
  EXPECT_LT(aligned, 20) << "random starts, not the disjoint cut";
  EXPECT_EQ(load_calibration(f.model, o, nullptr), a) << "same seed, same windows";
}

}  // namespace
}  // namespace quant
