// GGUF: hand-worked ggml blocks, dequantize(quantize(x)) bounds, the container round trip and
// hostile files, and the export of stories260K.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/formats/codec.h"
#include "quant/core/dtype.h"
#include "quant/core/error.h"
#include "quant/formats/gguf_export.h"
#include "quant/formats/ggml_quants.h"
#include "quant/io/io.h"
#include "quant/model/model.h"
#include "quant/model/weights.h"

namespace quant::gguf {
namespace {

using testing::TempDir;

std::vector<std::uint8_t> block(GgmlType t, const std::vector<float>& x) {
  std::vector<std::uint8_t> b(static_cast<std::size_t>(type_info(t).bytes));
  quantize_row(t, x.data(), static_cast<std::int64_t>(x.size()), nullptr, b.data());
  return b;
}
std::uint16_t u16(const std::vector<std::uint8_t>& b, std::size_t at) {
  std::uint16_t v;
  std::memcpy(&v, b.data() + at, 2);
  return v;
}
std::uint32_t u32(const std::vector<std::uint8_t>& b, std::size_t at) {
  std::uint32_t v;
  std::memcpy(&v, b.data() + at, 4);
  return v;
}

TEST(GgmlBlocks, Q4_0HandWorked) {
  // x = −8 … 7, then sixteen zeros: the largest magnitude is −8, so d = −8/−8 = 1 and the
  // codes are (int8)(x + 8.5): 0 … 15, then 8. Byte j holds codes j (low) and j+16 (high).
  std::vector<float> x(32, 0.0f);
  for (int j = 0; j < 16; ++j) x[static_cast<std::size_t>(j)] = static_cast<float>(j - 8);
  const auto b = block(GgmlType::Q4_0, x);
  ASSERT_EQ(b.size(), 18u);
  EXPECT_EQ(u16(b, 0), 0x3C00);  // fp16 1.0
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b[static_cast<std::size_t>(2 + j)], 0x80 | j) << j;
}

TEST(GgmlBlocks, Q4_1HandWorked) {
  // x = 0 … 15 twice: min 0, d = 15/15 = 1, codes = x; byte j = j | j << 4.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[static_cast<std::size_t>(j)] = static_cast<float>(j % 16);
  const auto b = block(GgmlType::Q4_1, x);
  ASSERT_EQ(b.size(), 20u);
  EXPECT_EQ(u16(b, 0), 0x3C00);
  EXPECT_EQ(u16(b, 2), 0x0000);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b[static_cast<std::size_t>(4 + j)], j * 17) << j;
}

TEST(GgmlBlocks, Q5_0AndQ5_1HandWorked) {
  // Q5_0: x = j − 16: d = −16/−16 = 1, codes j; low nibbles j | (j+16)&15 << 4 = 17j; the fifth
  // bits are 0 for codes 0..15 and 1 for 16..31: qh = 0xFFFF0000.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[static_cast<std::size_t>(j)] = static_cast<float>(j - 16);
  const auto b = block(GgmlType::Q5_0, x);
  ASSERT_EQ(b.size(), 22u);
  EXPECT_EQ(u16(b, 0), 0x3C00);
  EXPECT_EQ(u32(b, 2), 0xFFFF0000u);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(b[static_cast<std::size_t>(6 + j)], j * 17) << j;
  // Q5_1: x = 0 … 31: min 0, d = 31/31 = 1, the same codes.
  for (int j = 0; j < 32; ++j) x[static_cast<std::size_t>(j)] = static_cast<float>(j);
  const auto c = block(GgmlType::Q5_1, x);
  ASSERT_EQ(c.size(), 24u);
  EXPECT_EQ(u16(c, 0), 0x3C00);
  EXPECT_EQ(u16(c, 2), 0x0000);
  EXPECT_EQ(u32(c, 4), 0xFFFF0000u);
  for (int j = 0; j < 16; ++j) EXPECT_EQ(c[static_cast<std::size_t>(8 + j)], j * 17) << j;
}

TEST(GgmlBlocks, Q8_0HandWorked) {
  // x = j − 16: d = 16/127, stored as fp16 0x3008 (0.12597656); codes roundf(x · 127/16):
  // −16 → −127, −8 → −63.5 → −64 (halves away from zero), 0 → 0, 15 → 119.06 → 119.
  std::vector<float> x(32);
  for (int j = 0; j < 32; ++j) x[static_cast<std::size_t>(j)] = static_cast<float>(j - 16);
  const auto b = block(GgmlType::Q8_0, x);
  ASSERT_EQ(b.size(), 34u);
  EXPECT_EQ(u16(b, 0), 0x3008);
  EXPECT_EQ(static_cast<std::int8_t>(b[2 + 0]), -127);
  EXPECT_EQ(static_cast<std::int8_t>(b[2 + 8]), -64);
  EXPECT_EQ(static_cast<std::int8_t>(b[2 + 16]), 0);
  EXPECT_EQ(static_cast<std::int8_t>(b[2 + 31]), 119);
}

TEST(GgmlBlocks, Q6_KZeroBlockAndLayout) {
  std::vector<float> x(256, 0.0f);
  const auto z = block(GgmlType::Q6_K, x);
  ASSERT_EQ(z.size(), 210u);
  for (auto v : z) EXPECT_EQ(v, 0);
  // One sub-block of 16 values 1.0, the rest 0. make_qx_quants gives sub-block 0 codes −32 and
  // scale −1/32 (ggml's sign convention: the largest value maps to −nmax); d = 1/(−128/scale)
  // = 1/4096 and that sub-block's int8 scale is −128. Decoding: (−1/32)·(−32) = 1.
  for (int j = 0; j < 16; ++j) x[static_cast<std::size_t>(j)] = 1.0f;
  const auto b = block(GgmlType::Q6_K, x);
  std::vector<float> y(256);
  dequantize_row(GgmlType::Q6_K, b.data(), 256, y.data());
  for (int j = 0; j < 16; ++j) EXPECT_NEAR(y[static_cast<std::size_t>(j)], 1.0f, 0.02f) << j;
  for (int j = 16; j < 256; ++j) EXPECT_EQ(y[static_cast<std::size_t>(j)], 0.0f) << j;
  EXPECT_EQ(static_cast<std::int8_t>(b[192]), -128);
  EXPECT_EQ(u16(b, 208), f32_to_f16(1.0f / 4096));
}

TEST(GgmlBlocks, Q4_KAndQ5_KHandWorked) {
  // 256 × 1.0: every sub-block gets codes nmax, scale 1/nmax and min 0. The 6-bit sub-scales
  // are all 63 (scale·63/max_scale), packed as bytes 0–3 = 63 | (63 >> 4) << 6 = 0xFF, bytes
  // 4–7 = the mins (0), bytes 8–11 = 63 & 15 = 0x0F. d = fp16(1/(63·nmax)): Q4_K 1/945 →
  // 0x1456, Q5_K 1/1953 → 0x1032; dmin 0. Codes 15 → nibbles 0xFF; Q5_K's 31 → low nibble 15
  // with every high bit set (qh all 0xFF).
  const std::vector<float> x(256, 1.0f);
  const std::vector<std::uint8_t> scales = {0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0, 0x0F, 0x0F, 0x0F, 0x0F};
  const auto b4 = block(GgmlType::Q4_K, x);
  ASSERT_EQ(b4.size(), 144u);
  EXPECT_EQ(u16(b4, 0), 0x1456);
  EXPECT_EQ(u16(b4, 2), 0x0000);
  EXPECT_EQ(std::vector<std::uint8_t>(b4.begin() + 4, b4.begin() + 16), scales);
  for (std::size_t i = 16; i < 144; ++i) EXPECT_EQ(b4[i], 0xFF) << i;
  const auto b5 = block(GgmlType::Q5_K, x);
  ASSERT_EQ(b5.size(), 176u);
  EXPECT_EQ(u16(b5, 0), 0x1032);
  EXPECT_EQ(u16(b5, 2), 0x0000);
  EXPECT_EQ(std::vector<std::uint8_t>(b5.begin() + 4, b5.begin() + 16), scales);
  for (std::size_t i = 16; i < 176; ++i) EXPECT_EQ(b5[i], 0xFF) << i;
  std::vector<float> y(256);
  for (GgmlType t : {GgmlType::Q4_K, GgmlType::Q5_K}) {
    dequantize_row(t, block(t, x).data(), 256, y.data());
    for (float v : y) EXPECT_NEAR(v, 1.0f, 2e-3f) << type_info(t).name;
  }
}

TEST(GgmlBlocks, RoundTripErrorBounds) {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(4096);
  for (auto& v : x) v = nd(rng);
  struct Case {
    GgmlType t;
    double rms_bound;  // relative RMS error bound
  };
  for (const Case c : {Case{GgmlType::F16, 1e-3}, Case{GgmlType::Q8_0, 0.01}, Case{GgmlType::Q6_K, 0.04},
                       Case{GgmlType::Q5_K, 0.05}, Case{GgmlType::Q4_K, 0.1},
                       Case{GgmlType::Q5_1, 0.05}, Case{GgmlType::Q5_0, 0.06}, Case{GgmlType::Q4_1, 0.1},
                       Case{GgmlType::Q4_0, 0.12}}) {
    const auto q = quantize_matrix(c.t, x.data(), 4, 1024, nullptr);
    EXPECT_EQ(q.size(), data_bytes(c.t, 4096));
    std::vector<float> y(4096);
    for (int r = 0; r < 4; ++r) dequantize_row(c.t, q.data() + r * data_bytes(c.t, 1024), 1024, y.data() + r * 1024);
    double e = 0, n = 0, max_block_err = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      e += (x[i] - y[i]) * (x[i] - y[i]);
      n += x[i] * x[i];
    }
    EXPECT_LT(std::sqrt(e / n), c.rms_bound) << type_info(c.t).name;
    // Per block: no element is off by more than one quantization step of its block.
    const std::int64_t blk = std::max<std::int64_t>(type_info(c.t).block, 32);
    for (std::size_t b0 = 0; b0 < x.size(); b0 += static_cast<std::size_t>(blk)) {
      float lo = x[b0], hi = x[b0];
      for (std::size_t i = b0; i < b0 + static_cast<std::size_t>(blk); ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
      for (std::size_t i = b0; i < b0 + static_cast<std::size_t>(blk); ++i) max_block_err = std::max(max_block_err, std::abs(x[i] - y[i]) / double(hi - lo));
    }
    EXPECT_LT(max_block_err, 1.0 / 8) << type_info(c.t).name;
  }
}

TEST(GgmlBlocks, ImportanceLowersTheWeightedError) {
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(2048), imp(2048);
  for (auto& v : x) v = nd(rng);
  for (auto& v : imp) v = std::exp(2.0f * nd(rng));
  for (GgmlType t : {GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q4_K, GgmlType::Q5_K, GgmlType::Q6_K}) {
    auto werr = [&](const float* im) {
      const auto q = quantize_matrix(t, x.data(), 1, 2048, im);
      std::vector<float> y(2048);
      dequantize_row(t, q.data(), 2048, y.data());
      double e = 0;
      for (std::size_t i = 0; i < x.size(); ++i) e += imp[i] * (x[i] - y[i]) * (x[i] - y[i]);
      return e;
    };
    EXPECT_LT(werr(imp.data()), werr(nullptr)) << type_info(t).name;
  }
}

TEST(GgufContainer, RoundTripAndHostileFiles) {
  TempDir dir;
  Writer w;
  w.set("general.architecture", Value::str("llama"));
  w.set("x.u32", Value::u32(7));
  w.set("x.f32", Value::f32(0.5f));
  w.set("x.flag", Value::boolean(true));
  w.set("x.list", Value::array(ValueType::STRING, {Value::str("a"), Value::str("bc")}));
  w.add_tensor("a", {3, 64}, GgmlType::Q8_0);
  w.add_tensor("b", {5}, GgmlType::F32);
  std::vector<float> a(192), bvals = {1, 2, 3, 4, 5};
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i) / 64.0f - 1.0f;
  const fs::path p = dir / "t.gguf";
  w.write(p, [&](std::size_t i) {
    return i == 0 ? quantize_matrix(GgmlType::Q8_0, a.data(), 3, 64, nullptr) : quantize_matrix(GgmlType::F32, bvals.data(), 1, 5, nullptr);
  });
  const File g = File::open(p);
  EXPECT_EQ(g.version, 3u);
  ASSERT_NE(g.find("x.u32"), nullptr);
  EXPECT_EQ(g.find("x.u32")->u, 7u);
  EXPECT_EQ(g.find("x.f32")->f, 0.5);
  EXPECT_EQ(g.find("x.flag")->u, 1u);
  EXPECT_EQ(g.find("x.list")->arr.at(1).s, "bc");
  EXPECT_EQ(g.tensor("a").ne, (std::vector<std::int64_t>{64, 3}));
  EXPECT_EQ(g.tensor("b").offset % 32, 0u);
  EXPECT_EQ(gguf::dequantize_tensor(g, "b"), bvals);
  const auto ad = gguf::dequantize_tensor(g, "a");
  for (std::size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(ad[i], a[i], 0.01);

  const std::string good = read_text_file(p);
  auto expect_error = [&](std::string bytes, const std::string& what) {
    const fs::path bad = dir / "bad.gguf";
    write_file_atomic(bad, bytes);
    try {
      File::open(bad);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad.string()), std::string::npos) << e.what();
    }
  };
  expect_error(good.substr(0, 40), "truncated metadata");
  expect_error("GGUX" + good.substr(4), "bad magic");
  std::string v = good;
  v[4] = 9;
  expect_error(v, "unknown version");
  std::string huge = good;
  const std::uint64_t lie = 1ull << 40;
  std::memcpy(huge.data() + 16, &lie, 8);  // metadata count
  expect_error(huge, "metadata count past the file");
  expect_error(good.substr(0, good.size() - 8), "tensor data past the end");
}

TEST(GgufExport, PermuteRopeRowsPairsHalves) {
  // One head of 4 rows (head_dim 4): rows [r0 r1 r2 r3] → [r0 r2 r1 r3].
  const std::vector<float> w = {0, 0, 1, 1, 2, 2, 3, 3};
  EXPECT_EQ(permute_rope_rows(w, 1, 2), (std::vector<float>{0, 0, 2, 2, 1, 1, 3, 3}));
  // Two heads of 8 rows: the inverse undoes it.
  std::vector<float> big(16 * 3);
  for (std::size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i);
  const auto p = permute_rope_rows(big, 2, 3);
  EXPECT_NE(p, big);
  EXPECT_EQ(unpermute_rope_rows(p, 2, 3), big);
}

TEST(GgufExport, Stories260KQ8_0) {
  QUANT_REQUIRE_SHARED();
  TempDir dir;
  const fs::path model_dir = testing::shared_dir() / "models" / "stories260K";
  const std::string out = (dir / "s.gguf").string();
  const fs::path dense = dir / "dense";
  const auto r = testing::run_quant("gguf " + model_dir.string() + " -t q8_0 -o " + out + " --dense-out " + dense.string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const File g = File::open(out);
  EXPECT_EQ(g.find("general.file_type")->u, 7u);
  EXPECT_EQ(g.find("llama.attention.head_count_kv")->u, 4u);
  EXPECT_EQ(g.find("tokenizer.ggml.tokens")->arr.size(), 512u);
  // Tied embeddings: no output.weight; token_embd (64-wide rows, not 256-blocks) is Q8_0;
  // ffn_down's 172-wide rows fit no 32-block: F16, as llama.cpp falls back.
  EXPECT_THROW(g.tensor("output.weight"), Error);
  EXPECT_EQ(g.tensor("token_embd.weight").type, GgmlType::Q8_0);
  EXPECT_EQ(g.tensor("blk.0.ffn_down.weight").type, GgmlType::F16);
  EXPECT_EQ(g.tensor("blk.0.attn_norm.weight").type, GgmlType::F32);
  EXPECT_EQ(g.tensors.size(), 2u + 5u * 9u);
  // q rows permuted to llama.cpp's pairing; v unchanged.
  const Model m = formats::open_model(model_dir);
  const Mat q = load_linear(m, m.layout().layers[0].linear(LinearKind::q));
  const auto gq = gguf::dequantize_tensor(g, "blk.0.attn_q.weight");
  const std::int64_t hd = m.config().head_dim;
  for (std::int64_t i = 0; i < hd / 2; ++i) {
    for (std::int64_t c = 0; c < 64; ++c) {
      EXPECT_NEAR(gq[static_cast<std::size_t>((2 * i + 1) * 64 + c)], q(hd / 2 + i, c), 0.01);
    }
  }
  const Mat v = load_linear(m, m.layout().layers[0].linear(LinearKind::v));
  const auto gv = gguf::dequantize_tensor(g, "blk.0.attn_v.weight");
  for (std::int64_t c = 0; c < 64; ++c) EXPECT_NEAR(gv[static_cast<std::size_t>(64 + c)], v(1, c), 0.01);
  // The dense twin holds exactly the GGUF's values, in HF's row order.
  const Model d = formats::open_model(dense);
  const Mat dq = load_linear(d, d.layout().layers[0].linear(LinearKind::q));
  const Mat dv = load_linear(d, d.layout().layers[0].linear(LinearKind::v));
  for (std::int64_t i = 0; i < hd / 2; ++i) {
    for (std::int64_t c = 0; c < 64; ++c) {
      EXPECT_EQ(gq[static_cast<std::size_t>((2 * i + 1) * 64 + c)], dq(hd / 2 + i, c));
      EXPECT_EQ(gq[static_cast<std::size_t>(2 * i * 64 + c)], dq(i, c));
    }
  }
  for (std::int64_t c = 0; c < 64; ++c) EXPECT_EQ(gv[static_cast<std::size_t>(64 + c)], dv(1, c));
}

}  // namespace
}  // namespace quant::gguf
