// imatrix files (issue 27 item 3): the statistic by hand, llama-imatrix's chunking, both file
// formats read and written, --imatrix-out reproducing the export, .dat ↔ GGUF conversion, and
// hostile legacy files. Agreement with llama-imatrix itself is checked by hand (docs/formats.md).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/formats/codec.h"
#include "quant/formats/imatrix.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"
#include "quant/model/weights.h"
#include "quant/pipeline/gguf_job.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

fs::path fixture(const TempDir& dir) {
  testing::TinyModelSpec s;
  s.hidden = 64;
  s.intermediate = 128;
  s.layers = 2;
  s.vocab = 96;
  testing::write_tiny_model(dir / "m", s);
  testing::write_tiny_tokenizer(dir / "m", 96);
  return dir / "m";
}

std::string text() {
  std::string t;
  for (int i = 0; i < 60; ++i) t += "the cat sat on the mat " + std::to_string(i * 37 % 100) + " ";
  return t;
}

TEST(Imatrix, ChunksAsLlamaImatrixCutsThem) {
  std::vector<std::int32_t> tokens(100);
  for (int i = 0; i < 100; ++i) tokens[static_cast<std::size_t>(i)] = i + 10;
  const auto c = gguf::imatrix_chunks(tokens, 16, 0, 1);
  ASSERT_EQ(c.size(), 6u);  // 100 / 16, the tail dropped
  EXPECT_EQ(c[2][0], 1);    // each chunk's first token replaced by BOS
  EXPECT_EQ(c[2][1], 10 + 33);
  EXPECT_EQ(c[5][15], 10 + 95);
  EXPECT_EQ(gguf::imatrix_chunks(tokens, 16, 2, -1).size(), 2u);
  EXPECT_EQ(gguf::imatrix_chunks(tokens, 16, 0, -1)[1][0], 10 + 16);  // no BOS: kept
  EXPECT_THROW(gguf::imatrix_chunks(tokens, 200, 0, 1), InputError);
}

// Layer 0's q/k/v input is RMSNorm(embedding of each token) · attn_norm: Σ x² per column
// recomputed here from the checkpoint's tensors.
TEST(Imatrix, StatisticEqualsTheNormedEmbeddingsByHand) {
  TempDir dir;
  const Model model = formats::open_model(fixture(dir));
  const std::vector<std::vector<std::int32_t>> chunks = {{1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61},
                                                         {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}};
  const gguf::Imatrix m = gguf::compute_imatrix(model, chunks, false);
  EXPECT_EQ(m.chunk_count, 2);
  EXPECT_EQ(m.chunk_size, 16);
  EXPECT_FALSE(m.entries.contains("token_embd.weight"));  // the head only with process_output
  const auto& q = m.entries.at("blk.0.attn_q.weight");
  EXPECT_EQ(q.count, 32.0);
  EXPECT_EQ(m.entries.at("blk.0.attn_v.weight").sum2, q.sum2);  // q, k, v share their input
  const Mat embed = load_matrix(model, model.layout().embed);
  const Vec w = load_vector(model, model.layout().layers[0].attn_norm);
  std::vector<double> expect(64, 0.0);
  for (const auto& chunk : chunks) {
    for (std::int32_t t : chunk) {
      const auto row = embed.row(t);
      double ss = 0;
      for (int j = 0; j < 64; ++j) ss += static_cast<double>(row(j)) * row(j);
      const double inv = 1.0 / std::sqrt(ss / 64 + model.config().rms_norm_eps);
      for (int j = 0; j < 64; ++j) {
        const double x = row(j) * inv * w(j);
        expect[static_cast<std::size_t>(j)] += x * x;
      }
    }
  }
  for (int j = 0; j < 64; ++j) EXPECT_NEAR(q.sum2[static_cast<std::size_t>(j)], expect[static_cast<std::size_t>(j)], 1e-4 * expect[static_cast<std::size_t>(j)]);
}

TEST(Imatrix, BothFormatsRoundTripToTheSameImportance) {
  TempDir dir;
  gguf::Imatrix m;
  m.entries["blk.0.attn_q.weight"] = {{3.0f, 12.0f, 0.5f}, 6};
  m.entries["blk.0.ffn_down.weight"] = {{1.0f, 2.0f}, 6};
  m.chunk_count = 3;
  m.chunk_size = 2;
  m.datasets = {"calib.txt"};
  m.write(dir / "a.gguf", {});
  m.write(dir / "a.dat", {});
  const gguf::Imatrix g = gguf::read_imatrix_file(dir / "a.gguf");
  const gguf::Imatrix d = gguf::read_imatrix_file(dir / "a.dat");
  EXPECT_FALSE(g.legacy);
  EXPECT_TRUE(d.legacy);
  EXPECT_EQ(g.chunk_size, 2);
  EXPECT_EQ(d.chunk_count, 3);
  EXPECT_EQ(d.datasets, std::vector<std::string>{"calib.txt"});
  // Legacy bytes by hand: 2 entries; "blk.0.attn_q.weight", ncall 3, 3 values (s / 6) · 3.
  const std::string raw = read_text_file(dir / "a.dat");
  std::int32_t n, len, ncall, nval;
  std::memcpy(&n, raw.data(), 4);
  std::memcpy(&len, raw.data() + 4, 4);
  EXPECT_EQ(n, 2);
  EXPECT_EQ(raw.substr(8, static_cast<std::size_t>(len)), "blk.0.attn_q.weight");
  std::memcpy(&ncall, raw.data() + 8 + len, 4);
  std::memcpy(&nval, raw.data() + 12 + len, 4);
  float v1;
  std::memcpy(&v1, raw.data() + 16 + len + 4, 4);
  EXPECT_EQ(ncall, 3);
  EXPECT_EQ(nval, 3);
  EXPECT_EQ(v1, 6.0f);  // 12 / 6 · 3
  const auto ig = g.importance(), id = d.importance();
  EXPECT_EQ(ig.at("blk.0.attn_q.weight"), (std::vector<float>{0.5f, 2.0f, 0.5f / 6.0f}));
  for (std::size_t j = 0; j < 3; ++j) EXPECT_FLOAT_EQ(id.at("blk.0.attn_q.weight")[j], ig.at("blk.0.attn_q.weight")[j]);
}

TEST(Imatrix, HostileLegacyFilesAreRefusedNamingTheFile) {
  TempDir dir;
  auto refused = [&](const std::string& bytes, const std::string& what) {
    write_file_atomic(dir / "x.dat", bytes);
    try {
      (void)gguf::read_imatrix_file(dir / "x.dat");
      ADD_FAILURE() << "accepted: " << what;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("x.dat"), std::string::npos) << e.what();
    }
  };
  auto i32 = [](std::int32_t v) { return std::string(reinterpret_cast<const char*>(&v), 4); };
  refused("", "empty");
  refused(i32(0), "no entries");
  refused(i32(1) + i32(1000) + "ab", "name past the end");
  refused(i32(1) + i32(2) + "ab" + i32(1) + i32(1 << 30), "values past the end");
  refused(i32(1) + i32(2) + "ab" + i32(0) + i32(1) + std::string(4, '\0'), "ncall 0");
  refused(i32(2) + i32(2) + "ab" + i32(1) + i32(1) + std::string(4, '\0'), "a missing second entry");
}

TEST(ImatrixCli, ImatrixOutReproducesTheExportAndConvertsBothWays) {
  TempDir dir;
  const fs::path m = fixture(dir);
  write_file_atomic(dir / "t.txt", text());
  const std::string calib = " --calib " + (dir / "t.txt").string() + " --nsamples 4 --seqlen 32";
  // The importance a --calib export used, written out, gives the same GGUF when read back.
  auto r = run_quant("gguf " + m.string() + " -t q4_0 -o " + (dir / "a.gguf").string() + calib + " --imatrix-out " + (dir / "im.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_quant("gguf " + m.string() + " -t q4_0 -o " + (dir / "b.gguf").string() + " --imatrix " + (dir / "im.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(read_text_file(dir / "a.gguf"), read_text_file(dir / "b.gguf"));
  // quant imatrix in both formats; the .dat converted to GGUF gives the same export.
  r = run_quant("imatrix " + m.string() + " --calib " + (dir / "t.txt").string() + " --ctx 64 -o " + (dir / "x.dat").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  r = run_quant("imatrix --in-file " + (dir / "x.dat").string() + " --ctx 64 -o " + (dir / "x.gguf").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  const gguf::Imatrix x = gguf::read_imatrix_file(dir / "x.gguf");
  EXPECT_EQ(x.chunk_size, 64);
  EXPECT_EQ(x.entries.at("blk.1.ffn_down.weight").count, 64.0 * static_cast<double>(x.chunk_count));
  for (const char* f : {"x.dat", "x.gguf"}) {
    r = run_quant("gguf " + m.string() + " -t q4_0 -o " + (dir / (std::string(f) + ".out")).string() + " --imatrix " + (dir / f).string());
    ASSERT_EQ(r.rc, 0) << r.err;
  }
  EXPECT_EQ(read_text_file(dir / "x.dat.out"), read_text_file(dir / "x.gguf.out"));
  // Refusals before any work.
  r = run_quant("gguf " + m.string() + " -t q4_0 -o " + (dir / "c.gguf").string() + " --imatrix-out " + (dir / "y.gguf").string());
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("--imatrix-out writes the importance computed from --calib"), std::string::npos) << r.err;
  r = run_quant("imatrix " + m.string() + " --calib " + (dir / "t.txt").string() + " -o " + (dir / "t.txt").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_FALSE(fs::exists(dir / "c.gguf"));
}

}  // namespace
}  // namespace quant
