// Bit streams of codes shared by the packed formats (gptq qweight/qzeros, lut qweight).
#include <cstring>

#include "codec_detail.h"
#include "quant/formats/formats.h"

namespace quant::formats {

void pack_bits(const std::uint32_t* codes, std::size_t n, int bits, std::uint32_t* words) {
  const std::size_t n_words = (n * static_cast<std::size_t>(bits) + 31) / 32;
  std::fill(words, words + n_words, 0u);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t bit = i * static_cast<std::size_t>(bits);
    const std::size_t w = bit / 32, off = bit % 32;
    words[w] |= codes[i] << off;
    if (off + static_cast<std::size_t>(bits) > 32) words[w + 1] |= codes[i] >> (32 - off);
  }
}

void unpack_bits(const std::uint32_t* words, std::size_t n, int bits, std::uint32_t* codes) {
  const std::uint32_t mask = (1u << bits) - 1u;
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t bit = i * static_cast<std::size_t>(bits);
    const std::size_t w = bit / 32, off = bit % 32;
    std::uint64_t v = words[w] >> off;
    if (off + static_cast<std::size_t>(bits) > 32) v |= static_cast<std::uint64_t>(words[w + 1]) << (32 - off);
    codes[i] = static_cast<std::uint32_t>(v) & mask;
  }
}

std::int64_t code_rows(std::int64_t in, int bits) { return (in * bits + 31) / 32; }

namespace {
// One 32-bit word of codes c[0..32/bits) (each < 2^bits), code i at bit i·bits — what pack_bits
// gives for widths that divide 32, by SWAR shifts instead of a loop over codes.
std::uint32_t pack_word(const std::uint8_t* c, int bits) {
  std::uint32_t word = 0;
  if (bits == 8) {
    std::memcpy(&word, c, 4);
    return word;
  }
  auto squeeze = [](std::uint64_t x, int b) {  // 8 bytes, each < 2^b, into 8·b bits
    x = (x | x >> (8 - b)) & (b == 4 ? 0x00FF00FF00FF00FFull : 0x000F000F000F000Full);
    x = (x | x >> (16 - 2 * b)) & (b == 4 ? 0x0000FFFF0000FFFFull : 0x000000FF000000FFull);
    x = (x | x >> (32 - 4 * b)) & (b == 4 ? 0xFFFFFFFFull : 0xFFFFull);
    return x;
  };
  std::uint64_t lo = 0;
  std::memcpy(&lo, c, 8);
  if (bits == 4) return static_cast<std::uint32_t>(squeeze(lo, 4));
  std::uint64_t hi = 0;
  std::memcpy(&hi, c + 8, 8);
  return static_cast<std::uint32_t>(squeeze(lo, 2) | squeeze(hi, 2) << 16);
}
}  // namespace

std::vector<std::int32_t> pack_code_columns(const QuantizedMatrix& m) {
  const std::int64_t rows = code_rows(m.in, m.bits);
  std::vector<std::int32_t> qweight(static_cast<std::size_t>(rows * m.out));
  const bool whole_words = 32 % m.bits == 0 && m.in % (32 / m.bits) == 0;
  if (whole_words) {
    // Tiles of 16 output columns: each word row k is written as a contiguous run.
    const std::int64_t per = 32 / m.bits, tile = 16;
#pragma omp parallel for schedule(static) if (m.out * m.in > (1 << 16))
    for (std::int64_t ob = 0; ob < m.out; ob += tile) {
      const std::int64_t oe = std::min(m.out, ob + tile);
      for (std::int64_t k = 0; k < rows; ++k) {
        for (std::int64_t o = ob; o < oe; ++o) {
          qweight[static_cast<std::size_t>(k * m.out + o)] =
              static_cast<std::int32_t>(pack_word(m.q.data() + static_cast<std::size_t>(o * m.in + k * per), m.bits));
        }
      }
    }
    return qweight;
  }
#pragma omp parallel if (m.out * m.in > (1 << 16))
  {
    std::vector<std::uint32_t> codes(static_cast<std::size_t>(m.in));
    std::vector<std::uint32_t> words(static_cast<std::size_t>(rows) + 1);
#pragma omp for schedule(static)
    for (std::int64_t o = 0; o < m.out; ++o) {
      for (std::int64_t j = 0; j < m.in; ++j) codes[static_cast<std::size_t>(j)] = m.q[static_cast<std::size_t>(o * m.in + j)];
      pack_bits(codes.data(), static_cast<std::size_t>(m.in), m.bits, words.data());
      for (std::int64_t k = 0; k < rows; ++k) qweight[static_cast<std::size_t>(k * m.out + o)] = static_cast<std::int32_t>(words[static_cast<std::size_t>(k)]);
    }
  }
  return qweight;
}

std::vector<std::uint8_t> unpack_code_columns(const std::vector<std::int32_t>& qweight, std::int64_t out, std::int64_t in, int bits) {
  const std::int64_t rows = code_rows(in, bits);
  std::vector<std::uint8_t> q(static_cast<std::size_t>(out * in));
  std::vector<std::uint32_t> words(static_cast<std::size_t>(rows) + 1, 0u);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(in));
  for (std::int64_t o = 0; o < out; ++o) {
    for (std::int64_t k = 0; k < rows; ++k) words[static_cast<std::size_t>(k)] = static_cast<std::uint32_t>(qweight[static_cast<std::size_t>(k * out + o)]);
    unpack_bits(words.data(), static_cast<std::size_t>(in), bits, codes.data());
    for (std::int64_t j = 0; j < in; ++j) q[static_cast<std::size_t>(o * in + j)] = static_cast<std::uint8_t>(codes[static_cast<std::size_t>(j)]);
  }
  return q;
}

}  // namespace quant::formats
