#include "quant/formats/formats.h"

#include <cstring>

#include "quant/dtype.h"
#include "quant/error.h"

namespace quant::formats {

Format parse_format(const std::string& name) {
  if (name == "gptq") return Format::gptq;
  if (name == "awq") return Format::awq;
  if (name == "dense") return Format::dense;
  if (name == "lut") return Format::lut;
  fail<UsageError>("unknown format '{}' (gptq, awq, lut, dense)", name);
}

std::string format_name(Format f) {
  switch (f) {
    case Format::gptq: return "gptq";
    case Format::awq: return "awq";
    case Format::dense: return "dense";
    case Format::lut: return "lut";
  }
  return "?";
}

std::string unsupported_reason(Format format, std::int64_t out, std::int64_t in, const QuantSpec& spec) {
  const std::int64_t g = spec.effective_group(in);
  switch (format) {
    case Format::dense: return {};
    case Format::gptq:
      if ((in * spec.bits) % 32 != 0 || in % 32 != 0) {
        return fmt::format("{} input features: the gptq layout packs inputs in whole 32-bit words and needs a multiple of 32", in);
      }
      if ((out * spec.bits) % 32 != 0) return fmt::format("{} output features: qzeros needs out·bits to be a multiple of 32", out);
      // A group wider than the row is one group: scales have ceil(in/G) = 1 row, as loaders expect.
      if (in % g != 0 && in > g) return fmt::format("{} input features are not a multiple of the group size {}", in, g);
      return {};
    case Format::awq:
      if (spec.bits != 4) return fmt::format("the awq GEMM layout is 4-bit only (asked for {} bits)", spec.bits);
      if (out % 8 != 0) return fmt::format("{} output features: the awq layout needs a multiple of 8", out);
      if (in % g != 0) return fmt::format("{} input features are not a multiple of the group size {}", in, g);
      return {};
    case Format::lut:
      if (in % g != 0 && in > g) return fmt::format("{} input features are not a multiple of the group size {}", in, g);
      return {};
  }
  return "unknown format";
}

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

static std::vector<std::int32_t> pack_code_columns(const QuantizedMatrix& m) {
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

static std::vector<std::uint8_t> unpack_code_columns(const std::vector<std::int32_t>& qweight, std::int64_t out, std::int64_t in, int bits) {
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

GptqTensors pack_gptq(const QuantizedMatrix& m) {
  const std::int64_t zcols = m.out * m.bits / 32;
  GptqTensors t;
  t.qzeros.resize(static_cast<std::size_t>(m.n_groups * zcols));
  t.scales.resize(static_cast<std::size_t>(m.n_groups * m.out));
  t.g_idx = m.g_idx;
  t.qweight = pack_code_columns(m);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(m.out));
  std::vector<std::uint32_t> words(static_cast<std::size_t>(zcols) + 1);
  const std::uint32_t mask = (1u << m.bits) - 1u;
  for (std::int64_t g = 0; g < m.n_groups; ++g) {
    for (std::int64_t o = 0; o < m.out; ++o) {
      const GroupParams p = m.params(o, g);
      codes[o] = static_cast<std::uint32_t>(static_cast<std::int64_t>(p.zero) - 1) & mask;  // v1 stores zero − 1
      t.scales[static_cast<std::size_t>(g * m.out + o)] = f32_to_f16(p.scale);
    }
    pack_bits(codes.data(), static_cast<std::size_t>(m.out), m.bits, words.data());
    for (std::int64_t k = 0; k < zcols; ++k) t.qzeros[static_cast<std::size_t>(g * zcols + k)] = static_cast<std::int32_t>(words[k]);
  }
  return t;
}

QuantizedMatrix unpack_gptq(const GptqTensors& t, std::int64_t out, std::int64_t in, int bits) {
  const std::int64_t zcols = out * bits / 32;
  const std::int64_t n_groups = static_cast<std::int64_t>(t.scales.size()) / out;
  QuantizedMatrix m;
  m.bits = bits;
  m.out = out;
  m.in = in;
  m.n_groups = n_groups;
  m.group_size = (in + n_groups - 1) / n_groups;
  m.g_idx = t.g_idx;
  m.scales.resize(static_cast<std::size_t>(out * n_groups));
  m.zeros.resize(static_cast<std::size_t>(out * n_groups));
  m.q = unpack_code_columns(t.qweight, out, in, bits);
  std::vector<std::uint32_t> words(static_cast<std::size_t>(zcols) + 1, 0u);
  std::vector<std::uint32_t> codes(static_cast<std::size_t>(out));
  for (std::int64_t g = 0; g < n_groups; ++g) {
    for (std::int64_t k = 0; k < zcols; ++k) words[k] = static_cast<std::uint32_t>(t.qzeros[static_cast<std::size_t>(g * zcols + k)]);
    unpack_bits(words.data(), static_cast<std::size_t>(out), bits, codes.data());
    for (std::int64_t o = 0; o < out; ++o) {
      m.zeros[static_cast<std::size_t>(o * n_groups + g)] = static_cast<float>(codes[o] + 1);
      m.scales[static_cast<std::size_t>(o * n_groups + g)] = f16_to_f32(t.scales[static_cast<std::size_t>(g * out + o)]);
    }
  }
  return m;
}

AwqTensors pack_awq(const QuantizedMatrix& m) {
  const std::int64_t cols = m.out / 8;
  AwqTensors t;
  t.qweight.assign(static_cast<std::size_t>(m.in * cols), 0);
  t.qzeros.assign(static_cast<std::size_t>(m.n_groups * cols), 0);
  t.scales.resize(static_cast<std::size_t>(m.n_groups * m.out));
  for (std::int64_t j = 0; j < m.in; ++j) {
    for (std::int64_t c = 0; c < cols; ++c) {
      std::uint32_t word = 0;
      for (int k = 0; k < 8; ++k) {
        const std::int64_t o = 8 * c + kAwqOrder[k];
        word |= static_cast<std::uint32_t>(m.q[static_cast<std::size_t>(o * m.in + j)]) << (4 * k);
      }
      t.qweight[static_cast<std::size_t>(j * cols + c)] = static_cast<std::int32_t>(word);
    }
  }
  for (std::int64_t g = 0; g < m.n_groups; ++g) {
    for (std::int64_t c = 0; c < cols; ++c) {
      std::uint32_t word = 0;
      for (int k = 0; k < 8; ++k) {
        const std::int64_t o = 8 * c + kAwqOrder[k];
        word |= static_cast<std::uint32_t>(m.params(o, g).zero) << (4 * k);
      }
      t.qzeros[static_cast<std::size_t>(g * cols + c)] = static_cast<std::int32_t>(word);
    }
    for (std::int64_t o = 0; o < m.out; ++o) t.scales[static_cast<std::size_t>(g * m.out + o)] = f32_to_f16(m.params(o, g).scale);
  }
  return t;
}

QuantizedMatrix unpack_awq(const AwqTensors& t, std::int64_t out, std::int64_t in, std::int64_t group_size) {
  QuantSpec spec;
  spec.bits = 4;
  spec.group_size = group_size;
  QuantizedMatrix m = QuantizedMatrix::empty(out, in, spec);
  const std::int64_t cols = out / 8;
  for (std::int64_t j = 0; j < in; ++j) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto word = static_cast<std::uint32_t>(t.qweight[static_cast<std::size_t>(j * cols + c)]);
      for (int k = 0; k < 8; ++k) {
        m.q[static_cast<std::size_t>((8 * c + kAwqOrder[k]) * in + j)] = static_cast<std::uint8_t>((word >> (4 * k)) & 0xF);
      }
    }
  }
  for (std::int64_t g = 0; g < m.n_groups; ++g) {
    for (std::int64_t c = 0; c < cols; ++c) {
      const auto word = static_cast<std::uint32_t>(t.qzeros[static_cast<std::size_t>(g * cols + c)]);
      for (int k = 0; k < 8; ++k) {
        m.zeros[static_cast<std::size_t>((8 * c + kAwqOrder[k]) * m.n_groups + g)] = static_cast<float>((word >> (4 * k)) & 0xF);
      }
    }
    for (std::int64_t o = 0; o < out; ++o) {
      m.scales[static_cast<std::size_t>(o * m.n_groups + g)] = f16_to_f32(t.scales[static_cast<std::size_t>(g * out + o)]);
    }
  }
  return m;
}

LutTensors pack_lut(const QuantizedMatrix& m) {
  if (!m.non_uniform()) fail<Error>("pack_lut: the matrix has no codebooks");
  LutTensors t;
  t.qweight = pack_code_columns(m);
  t.lookup_table.resize(m.lut.size());
  for (std::size_t i = 0; i < m.lut.size(); ++i) t.lookup_table[i] = f32_to_f16(m.lut[i]);
  t.outlier_rowptr = m.outlier_rowptr;
  t.outlier_cols = m.outlier_cols;
  t.outlier_vals = m.outlier_vals;
  return t;
}

QuantizedMatrix unpack_lut(const LutTensors& t, std::int64_t out, std::int64_t in, int bits, std::int64_t n_groups) {
  QuantizedMatrix m;
  m.bits = bits;
  m.out = out;
  m.in = in;
  m.n_groups = n_groups;
  m.group_size = (in + n_groups - 1) / n_groups;
  m.g_idx.resize(static_cast<std::size_t>(in));
  for (std::int64_t j = 0; j < in; ++j) m.g_idx[static_cast<std::size_t>(j)] = static_cast<std::int32_t>(j / m.group_size);
  m.q = unpack_code_columns(t.qweight, out, in, bits);
  m.lut.resize(t.lookup_table.size());
  for (std::size_t i = 0; i < m.lut.size(); ++i) m.lut[i] = f16_to_f32(t.lookup_table[i]);
  m.outlier_rowptr = t.outlier_rowptr;
  m.outlier_cols = t.outlier_cols;
  m.outlier_vals = t.outlier_vals;
  return m;
}

}  // namespace quant::formats
