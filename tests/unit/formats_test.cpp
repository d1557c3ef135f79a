#include "quant/formats/formats.h"

#include <gtest/gtest.h>

#include "quant/core/dtype.h"
#include "quant/core/error.h"

namespace quant::formats {
namespace {

// A matrix whose codes and zeros walk through every value of the bit width.
QuantizedMatrix every_code(std::int64_t out, std::int64_t in, int bits, std::int64_t group, int min_zero) {
  QuantSpec s;
  s.bits = bits;
  s.group_size = group;
  QuantizedMatrix m = QuantizedMatrix::empty(out, in, s);
  const int levels = 1 << bits;
  for (std::int64_t i = 0; i < out * in; ++i) m.q[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>((i * 7 + i / levels) % levels);
  for (std::size_t k = 0; k < m.zeros.size(); ++k) {
    m.zeros[k] = static_cast<float>(min_zero + static_cast<int>(k) % (levels - min_zero));
    m.scales[k] = f16_to_f32(f32_to_f16(0.001f * static_cast<float>(k + 1)));
  }
  return m;
}

void expect_same(const QuantizedMatrix& a, const QuantizedMatrix& b) {
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.zeros, b.zeros);
  EXPECT_EQ(a.scales, b.scales);
  EXPECT_EQ(a.g_idx, b.g_idx);
}

TEST(PackBits, EveryWidthAndEveryCodeRoundTrips) {
  for (int bits = 1; bits <= 8; ++bits) {
    std::vector<std::uint32_t> codes(3 * 256 + 5);
    for (std::size_t i = 0; i < codes.size(); ++i) codes[i] = static_cast<std::uint32_t>((i * 37 + i / 3) % (1u << bits));
    std::vector<std::uint32_t> words((codes.size() * bits + 31) / 32);
    pack_bits(codes.data(), codes.size(), bits, words.data());
    std::vector<std::uint32_t> back(codes.size());
    unpack_bits(words.data(), codes.size(), bits, back.data());
    EXPECT_EQ(back, codes) << bits;
  }
}

TEST(Gptq, EveryBitWidthRoundTripsEveryCode) {
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (std::int64_t group : {32, 64}) {
      const auto m = every_code(64, 128, bits, group, 1);
      const auto t = pack_gptq(m);
      EXPECT_EQ(t.qweight.size(), static_cast<std::size_t>(128 * bits / 32 * 64));
      EXPECT_EQ(t.qzeros.size(), static_cast<std::size_t>(m.n_groups * 64 * bits / 32));
      expect_same(unpack_gptq(t, 64, 128, bits), m);
    }
  }
}

TEST(Gptq, WholeWordPackingMatchesTheBitStream) {
  // Widths that divide 32 take a word-at-a-time path; it must equal pack_bits on each column,
  // also for output counts that are no multiple of its 16-column tiles.
  for (int bits : {2, 4, 8}) {
    QuantSpec s;
    s.bits = bits;
    s.group_size = 32;
    const std::int64_t out = 37, in = 96;
    QuantizedMatrix m = QuantizedMatrix::empty(out, in, s);
    for (std::size_t i = 0; i < m.q.size(); ++i) m.q[i] = static_cast<std::uint8_t>((i * 2654435761u >> 7) % (1u << bits));
    const auto t = pack_gptq(m);
    const std::int64_t rows = in * bits / 32;
    for (std::int64_t o = 0; o < out; ++o) {
      std::vector<std::uint32_t> codes(m.q.begin() + o * in, m.q.begin() + (o + 1) * in), words(rows);
      pack_bits(codes.data(), codes.size(), bits, words.data());
      for (std::int64_t k = 0; k < rows; ++k) {
        ASSERT_EQ(static_cast<std::uint32_t>(t.qweight[static_cast<std::size_t>(k * out + o)]), words[k]) << bits << " " << o << " " << k;
      }
    }
  }
}

TEST(Gptq, GoldenFourBitWords) {
  // out 8, in 32, one group. Codes q[o][j] = (j + o) % 16; zeros o + 1 (stored as o).
  QuantSpec s;
  s.group_size = 32;
  QuantizedMatrix m = QuantizedMatrix::empty(8, 32, s);
  for (int o = 0; o < 8; ++o) {
    for (int j = 0; j < 32; ++j) m.q[o * 32 + j] = static_cast<std::uint8_t>((j + o) % 16);
    m.zeros[o] = static_cast<float>(o + 1);
    m.scales[o] = 0.5f;
  }
  const auto t = pack_gptq(m);
  // qweight [4, 8]: word k of column o packs codes 8k..8k+7, lowest nibble first.
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[0 * 8 + 0]), 0x76543210u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[1 * 8 + 0]), 0xFEDCBA98u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[2 * 8 + 0]), 0x76543210u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[0 * 8 + 1]), 0x87654321u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[3 * 8 + 7]), 0x6543210Fu);
  // qzeros [1, 1]: zero − 1 of output o in nibble o.
  ASSERT_EQ(t.qzeros.size(), 1u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qzeros[0]), 0x76543210u);
  EXPECT_EQ(t.scales[3], 0x3800);  // fp16 0.5
  EXPECT_EQ(t.g_idx[31], 0);
}

TEST(Gptq, GoldenThreeBitWordsMatchAutoGptqStraddling) {
  // 3-bit: 32 codes fill 3 words; codes 10 and 21 straddle word boundaries. Expected words
  // from AutoGPTQ's pack loop for codes j % 8 and 7 − j % 8.
  QuantSpec s;
  s.bits = 3;
  s.group_size = 32;
  QuantizedMatrix m = QuantizedMatrix::empty(32, 32, s);
  for (int j = 0; j < 32; ++j) {
    m.q[0 * 32 + j] = static_cast<std::uint8_t>(j % 8);
    m.q[1 * 32 + j] = static_cast<std::uint8_t>(7 - j % 8);
  }
  for (auto& z : m.zeros) z = 4.0f;
  const auto t = pack_gptq(m);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[0 * 32 + 0]), 0x88fac688u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[1 * 32 + 0]), 0xc688fac6u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[2 * 32 + 0]), 0xfac688fau);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[0 * 32 + 1]), 0x77053977u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[1 * 32 + 1]), 0x39770539u);
  EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[2 * 32 + 1]), 0x05397705u);
  // Every zero stored as 3 = 0b011: the bit stream 011 011 ... over 32 outputs.
  EXPECT_EQ(static_cast<std::uint32_t>(t.qzeros[0]), 0xDB6DB6DBu);
}

TEST(Awq, RoundTripsEveryCode) {
  for (std::int64_t group : {8, 32, 128}) {
    const auto m = every_code(32, 128, 4, group, 0);
    expect_same(unpack_awq(pack_awq(m), 32, 128, group), m);
  }
}

TEST(Awq, GoldenInterleavedNibbles) {
  // out 8, in 8, group 8; code of output o is o everywhere, zero of o is 15 − o.
  QuantSpec s;
  s.group_size = 8;
  QuantizedMatrix m = QuantizedMatrix::empty(8, 8, s);
  for (int o = 0; o < 8; ++o) {
    for (int j = 0; j < 8; ++j) m.q[o * 8 + j] = static_cast<std::uint8_t>(o);
    m.zeros[o] = static_cast<float>(15 - o);
  }
  const auto t = pack_awq(m);
  ASSERT_EQ(t.qweight.size(), 8u);
  // Nibble k holds output channel [0,2,4,6,1,3,5,7][k].
  for (int j = 0; j < 8; ++j) EXPECT_EQ(static_cast<std::uint32_t>(t.qweight[j]), 0x75316420u);
  // Zeros 15 − o in the same order: nibbles F,D,B,9,E,C,A,8 from the lowest.
  EXPECT_EQ(static_cast<std::uint32_t>(t.qzeros[0]), 0x8ACE9BDFu);
}

TEST(Formats, UnsupportedShapesAreExplained) {
  QuantSpec s;
  s.group_size = 32;
  EXPECT_EQ(unsupported_reason(Format::gptq, 64, 128, s), "");
  EXPECT_NE(unsupported_reason(Format::gptq, 64, 172, s).find("172 input features"), std::string::npos);
  EXPECT_NE(unsupported_reason(Format::gptq, 172, 64, s).find("172 output features"), std::string::npos);
  EXPECT_NE(unsupported_reason(Format::gptq, 64, 160, QuantSpec{}).find("group size 128"), std::string::npos);
  EXPECT_EQ(unsupported_reason(Format::gptq, 64, 96, QuantSpec{}), "");  // one group wider than the row
  s.bits = 3;
  EXPECT_NE(unsupported_reason(Format::awq, 64, 128, s).find("4-bit only"), std::string::npos);
  s.bits = 4;
  EXPECT_NE(unsupported_reason(Format::awq, 12, 128, s).find("multiple of 8"), std::string::npos);
  EXPECT_EQ(unsupported_reason(Format::dense, 7, 13, s), "");
  EXPECT_THROW(parse_format("gguf2"), UsageError);
}

}  // namespace
}  // namespace quant::formats
