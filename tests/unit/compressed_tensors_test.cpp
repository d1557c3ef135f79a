// compressed-tensors pack-quantized output, checked by an independent reader written here from
// the compressed-tensors spec (pack_quantized.py pack_to_int32 / unpack_from_int32,
// quantize_weight / dequantize_weight: ŵ = scale · (q − zero_point), q and zero_point signed,
// stored + 2^(bits−1), `32 / bits` per int32 little end first; zero points packed along the
// outputs; weight_g_idx names each input's group). It shares no code with quant's codec: its
// decoding of every configuration must equal, bit for bit, the dense weights quant's
// `--format dense` writes for the same command.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::run_quant;
using testing::TempDir;

template <typename T>
std::vector<T> raw(const TensorStore& s, const std::string& name) {
  const auto b = s.bytes(name);
  std::vector<T> v(b.size() / sizeof(T));
  std::memcpy(v.data(), b.data(), b.size());
  return v;
}

// The spec's unpack_from_int32 for a [rows, cols] tensor packed along `dim`.
std::vector<int> unpack(const std::vector<std::int32_t>& words, std::int64_t rows, std::int64_t cols, int bits, int dim) {
  const int per_word = 32 / bits;
  const std::int64_t word_cols = dim == 1 ? (cols + per_word - 1) / per_word : cols;
  std::vector<int> out(static_cast<std::size_t>(rows * cols));
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const std::int64_t i = dim == 1 ? c : r;
      const std::uint32_t word = static_cast<std::uint32_t>(words[static_cast<std::size_t>(dim == 1 ? r * word_cols + c / per_word : (r / per_word) * word_cols + c)]);
      const int u = static_cast<int>((word >> ((i % per_word) * bits)) & ((1u << bits) - 1u));
      out[static_cast<std::size_t>(r * cols + c)] = u - (1 << (bits - 1));
    }
  }
  return out;
}

// Decodes linear `p` of a compressed-tensors checkpoint from its config group's scheme.
std::vector<float> decode(const TensorStore& s, const json& weights, const std::string& p) {
  const int bits = weights["num_bits"];
  const auto shape = raw<std::int64_t>(s, p + ".weight_shape");
  const std::int64_t out = shape.at(0), in = shape.at(1);
  const std::vector<float> scale = s.read_f32(p + ".weight_scale");
  const std::int64_t groups = static_cast<std::int64_t>(scale.size()) / out;
  const std::vector<int> q = unpack(raw<std::int32_t>(s, p + ".weight_packed"), out, in, bits, 1);
  std::vector<int> zp(static_cast<std::size_t>(out * groups), 0);
  if (!weights["symmetric"].get<bool>()) zp = unpack(raw<std::int32_t>(s, p + ".weight_zero_point"), out, groups, bits, 0);
  std::vector<std::int32_t> g_idx(static_cast<std::size_t>(in));
  if (s.contains(p + ".weight_g_idx")) {
    g_idx = raw<std::int32_t>(s, p + ".weight_g_idx");
  } else {
    const std::int64_t g = weights["group_size"].is_null() ? in : weights["group_size"].get<std::int64_t>();
    for (std::int64_t j = 0; j < in; ++j) g_idx[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j / g);
  }
  std::vector<float> w(static_cast<std::size_t>(out * in));
  for (std::int64_t o = 0; o < out; ++o) {
    for (std::int64_t j = 0; j < in; ++j) {
      const std::size_t k = static_cast<std::size_t>(o * groups + g_idx[static_cast<std::size_t>(j)]);
      w[static_cast<std::size_t>(o * in + j)] = scale[k] * static_cast<float>(q[static_cast<std::size_t>(o * in + j)] - zp[k]);
    }
  }
  return w;
}

struct Case {
  std::string name, command;
};
void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class CompressedTensors : public ::testing::TestWithParam<Case> {};

TEST_P(CompressedTensors, IndependentReaderEqualsDenseOutput) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.hidden = 64;
  spec.intermediate = 128;
  spec.layers = 2;
  spec.tied = false;
  spec.seed = 5;
  spec.weight_scale = 0.3f;
  testing::write_tiny_model(dir / "m", spec);
  std::string calib;
  std::uint32_t x = 7;
  for (int i = 0; i < 2048; ++i) {
    x = x * 1664525u + 1013904223u;
    calib += std::to_string((x >> 9) % 96) + " ";
  }
  write_file_atomic(dir / "calib.txt", calib);
  const std::string cmd = fmt::format(fmt::runtime(GetParam().command), (dir / "m").string(),
                                      "--calib-tokens " + (dir / "calib.txt").string() + " --nsamples 8 --seqlen 64");
  const auto a = run_quant(cmd + " --format compressed-tensors -o " + (dir / "ct").string());
  ASSERT_EQ(a.rc, 0) << a.err;
  const auto b = run_quant(cmd + " --format dense -o " + (dir / "dense").string());
  ASSERT_EQ(b.rc, 0) << b.err;
  const auto c = run_quant("check " + (dir / "ct").string() + " --for vllm");
  EXPECT_EQ(c.rc, 0) << c.out << c.err;

  const json qc = read_json_file(dir / "ct" / "config.json")["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "compressed-tensors");
  EXPECT_EQ(qc["format"], "pack-quantized");
  EXPECT_EQ(qc["quantization_status"], "compressed");
  const json& weights = qc["config_groups"].begin().value()["weights"];
  const TensorStore ct = TensorStore::open(dir / "ct"), dense = TensorStore::open(dir / "dense");
  int n = 0;
  for (const auto& name : ct.names()) {
    if (!name.ends_with(".weight_packed")) continue;
    const std::string p = name.substr(0, name.size() - std::string(".weight_packed").size());
    EXPECT_EQ(ct.get(p + ".weight_shape").dtype, DType::I64);
    EXPECT_EQ(ct.contains(p + ".weight_zero_point"), !weights["symmetric"].get<bool>()) << p;
    EXPECT_EQ(ct.contains(p + ".weight_g_idx"), weights["actorder"] == "group") << p;
    const std::vector<float> mine = decode(ct, weights, p), theirs = dense.read_f32(p + ".weight");
    ASSERT_EQ(mine.size(), theirs.size()) << p;
    for (std::size_t i = 0; i < mine.size(); ++i) ASSERT_EQ(mine[i], theirs[i]) << p << " element " << i;
    ++n;
  }
  EXPECT_EQ(n, 2 * 7) << "every decoder linear is stored packed";  // lm_head stays in float (ignore)
  EXPECT_TRUE(ct.contains("lm_head.weight"));
}

INSTANTIATE_TEST_SUITE_P(
    Schemes, CompressedTensors,
    ::testing::Values(Case{"rtn_w4_g32_sym", "rtn {0} -b 4 -g 32"}, Case{"rtn_w4_g32_asym", "rtn {0} -b 4 -g 32 --no-sym"},
                      Case{"rtn_w8_channel", "rtn {0} -b 8 -g -1"}, Case{"rtn_w8_g16_asym", "rtn {0} -b 8 -g 16 --no-sym"},
                      Case{"gptq_w4_g32_actorder", "gptq {0} -b 4 -g 32 --act-order {1}"},
                      Case{"gptq_w4_channel_asym", "gptq {0} -b 4 -g -1 --no-sym {1}"}, Case{"awq_w4_g32", "awq {0} -b 4 -g 32 {1}"}),
    [](const ::testing::TestParamInfo<Case>& i) { return i.param.name; });

// What vLLM's compressed-tensors path cannot load is refused before any work.
TEST(CompressedTensorsCli, RefusesWhatVllmCannotLoad) {
  TempDir dir;
  testing::TinyModelSpec spec;
  spec.hidden = 64;
  spec.intermediate = 128;
  testing::write_tiny_model(dir / "m", spec);
  const auto r = run_quant("rtn " + (dir / "m").string() + " -b 3 -g 32 --format compressed-tensors -o " + (dir / "o").string());
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("holds 4 and 8 bits"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "o"));
  const auto k = run_quant("kmeans " + (dir / "m").string() + " -b 4 --format compressed-tensors -o " + (dir / "k").string());
  EXPECT_NE(k.rc, 0);
  EXPECT_NE(k.err.find("codebooks cannot be stored in the compressed-tensors format"), std::string::npos) << k.err;
  EXPECT_FALSE(fs::exists(dir / "k"));
}

}  // namespace
}  // namespace quant
