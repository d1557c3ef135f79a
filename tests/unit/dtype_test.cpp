#include "quant/core/dtype.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <limits>
#include <vector>

namespace quant {
namespace {

TEST(F16, HandComputedBitPatterns) {
  struct Case { std::uint16_t bits; float value; };
  const Case cases[] = {
      {0x0000, 0.0f},         {0x3C00, 1.0f},          {0xC000, -2.0f},
      {0x3555, 0.333251953125f},  // 1/3 rounded: 0x3555 = 1.0101010101b × 2^-2
      {0x7BFF, 65504.0f},     // largest finite
      {0x0400, 6.103515625e-05f},  // smallest normal 2^-14
      {0x0001, 5.9604644775390625e-08f},  // smallest subnormal 2^-24
      {0x03FF, 6.097555160522461e-05f},   // largest subnormal (1023 × 2^-24)
      {0x8001, -5.9604644775390625e-08f},
      {0x2E66, 0.0999755859375f},  // 0.1 rounds down to this
  };
  for (const auto& c : cases) {
    EXPECT_EQ(f16_to_f32(c.bits), c.value) << std::hex << c.bits;
    EXPECT_EQ(f32_to_f16(c.value), c.bits) << c.value;
  }
  EXPECT_EQ(f32_to_f16(0.1f), 0x2E66);
  EXPECT_EQ(std::bit_cast<std::uint32_t>(f16_to_f32(0x8000)), 0x80000000u);  // -0
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000);
}

TEST(F16, InfinityNaNAndOverflow) {
  EXPECT_EQ(f16_to_f32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_f32(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7E00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7C01)));  // signalling pattern stays NaN
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7C00);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xFC00);
  const std::uint16_t nan = f32_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_EQ(nan & 0x7C00, 0x7C00);
  EXPECT_NE(nan & 0x03FF, 0);
  EXPECT_EQ(f32_to_f16(65519.0f), 0x7BFF);  // below the halfway point: largest finite
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7C00);  // halfway to 2^16 rounds (to even) to inf
  EXPECT_EQ(f32_to_f16(1e10f), 0x7C00);
}

TEST(F16, RoundsToNearestEven) {
  // 1 + 2^-11 is halfway between 1 (0x3C00, even) and 1 + 2^-10 (0x3C01).
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  // 1 + 3·2^-11 is halfway between 0x3C01 and 0x3C02 (even).
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(f32_to_f16(1.0f + 1.1f * std::ldexp(1.0f, -11)), 0x3C01);
  // Subnormal rounding: 2^-25 is halfway between 0 and 2^-24 -> 0 (even); 1.5·2^-24 -> 2·2^-24.
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25) * 1.0001f), 0x0001);
  EXPECT_EQ(f32_to_f16(1.5f * std::ldexp(1.0f, -24)), 0x0002);
  EXPECT_EQ(f32_to_f16(2.5f * std::ldexp(1.0f, -24)), 0x0002);
  // Largest subnormal + half an ulp rounds up into the smallest normal.
  EXPECT_EQ(f32_to_f16(1023.5f * std::ldexp(1.0f, -24)), 0x0400);
}

TEST(F16, EveryHalfRoundTripsExactly) {
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << std::hex << h;
  }
}

TEST(BF16, BitPatternsAndRounding) {
  EXPECT_EQ(f32_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(bf16_to_f32(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_f32(0xC040), -3.0f);
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);  // tie -> even (up)
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x3F808001u)), 0x3F81);
  EXPECT_EQ(f32_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_TRUE(std::isnan(bf16_to_f32(f32_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_EQ(bf16_to_f32(0x0001), std::ldexp(1.0f, -133));  // subnormal
  for (std::uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(static_cast<std::uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), b);
  }
}

TEST(DType, NamesAndSizes) {
  for (auto d : {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64, DType::I32,
                 DType::I16, DType::I8, DType::U8, DType::F8_E4M3}) {
    EXPECT_EQ(parse_dtype(dtype_name(d)), d);
  }
  EXPECT_FALSE(parse_dtype("F8_E5M2").has_value());
  EXPECT_EQ(dtype_size(DType::F8_E4M3), 1u);
  EXPECT_EQ(dtype_size(DType::BF16), 2u);
  EXPECT_EQ(dtype_size(DType::I64), 8u);
}

}  // namespace
}  // namespace quant

// The float scan finds the first NaN or ±inf wherever it lies in a 4096-value block, and
// returns n when every value (including the largest finite and the subnormals) is finite.
TEST(DType, FirstNonFiniteFloatFindsTheFirstFlaggedIndex) {
  std::vector<float> v(10000, 1.5f);
  v[3] = std::numeric_limits<float>::max();
  v[4] = -std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(quant::first_non_finite(v.data(), v.size()), v.size());
  v[9000] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(quant::first_non_finite(v.data(), v.size()), 9000u);
  v[4097] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(quant::first_non_finite(v.data(), v.size()), 4097u);
  EXPECT_EQ(quant::first_non_finite(v.data(), 4097), 4097u);
}
