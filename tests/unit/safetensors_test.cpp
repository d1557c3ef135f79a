#include "quant/io/safetensors.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <numeric>

#include "fixtures.h"
#include "quant/core/dtype.h"
#include "quant/core/error.h"

namespace quant {
namespace {

using testing::TempDir;

template <typename T>
std::vector<std::byte> to_bytes(const std::vector<T>& v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

TEST(Safetensors, EveryDtypeRoundTrips) {
  TempDir dir;
  SafetensorsWriter w(dir.path(), {}, {{"format", "pt"}, {"note", "hello"}});
  std::vector<std::byte> payloads[9];
  const DType dtypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                          DType::I32, DType::I16, DType::I8, DType::U8};
  for (int i = 0; i < 9; ++i) {
    payloads[i].resize(6 * dtype_size(dtypes[i]));
    for (std::size_t k = 0; k < payloads[i].size(); ++k) payloads[i][k] = std::byte(k * 7 + i);
    w.add(std::string("t_") + std::string(dtype_name(dtypes[i])), dtypes[i], {2, 3}, payloads[i]);
  }
  w.add("scalar", DType::F32, {}, to_bytes(std::vector<float>{3.5f}));
  w.add("empty", DType::F32, {0, 4}, {});
  const auto files = w.finish();
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(files[0].filename(), "model.safetensors");

  SafetensorsFile f(files[0]);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("note"), "hello");
  for (int i = 0; i < 9; ++i) {
    const auto* t = f.find(std::string("t_") + std::string(dtype_name(dtypes[i])));
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, dtypes[i]);
    EXPECT_EQ(t->shape, (std::vector<std::int64_t>{2, 3}));
    auto b = f.bytes(*t);
    ASSERT_EQ(b.size(), payloads[i].size());
    EXPECT_EQ(std::memcmp(b.data(), payloads[i].data(), b.size()), 0);
  }
  EXPECT_TRUE(f.find("scalar")->shape.empty());
  EXPECT_EQ(f.find("empty")->nbytes, 0u);
  // Header length keeps the data region 8-byte aligned.
  std::ifstream in(files[0], std::ios::binary);
  std::uint64_t n = 0;
  in.read(reinterpret_cast<char*>(&n), 8);
  EXPECT_EQ(n % 8, 0u);
}

TEST(Safetensors, FloatConversionOnRead) {
  TempDir dir;
  const std::vector<float> values = {1.0f, -2.5f, 65504.0f, 0.0999755859375f};
  {
    SafetensorsWriter w(dir.path());
    w.add_f32("h", DType::F16, {4}, values);
    w.add_f32("b", DType::BF16, {4}, values);
    w.add_f32("f", DType::F64, {2, 2}, values);
    w.finish();
  }
  auto store = TensorStore::open(dir.path());
  EXPECT_EQ(store.read_f32("h"), values);
  EXPECT_EQ(store.read_f32("f"), values);
  auto b = store.read_f32("b");
  EXPECT_EQ(b[0], 1.0f);
  EXPECT_EQ(b[1], -2.5f);
  EXPECT_EQ(b[2], 65536.0f);  // bf16 has 8 mantissa bits: 65504 rounds to 2^16
}

// read_bytes_into: the stored bytes as they are, and the scan sees every chunk (the first
// flagged index over the whole tensor, across the 2^18-element chunks the reads use).
TEST(Safetensors, RawReadReturnsTheStoredBytesAndTheFirstFlaggedElement) {
  TempDir dir;
  const std::size_t n = 600000;  // three chunks
  std::vector<float> values(n);
  for (std::size_t i = 0; i < n; ++i) values[i] = static_cast<float>(i % 1000) * 0.25f - 100.0f;
  std::vector<float> bad = values;
  bad[270000] = INFINITY;  // in the second chunk
  bad[590000] = std::nanf("");
  {
    SafetensorsWriter w(dir.path());
    w.add_f32("ok", DType::F16, {600, 1000}, values);
    w.add_f32("bad", DType::BF16, {600, 1000}, bad);
    w.finish();
  }
  const TensorStore store = TensorStore::open(dir.path());
  EXPECT_TRUE(store.has_bytes("ok"));
  EXPECT_FALSE(store.has_bytes("absent"));
  std::vector<std::byte> raw(2 * n);
  EXPECT_EQ(store.read_bytes_into("ok", raw.data(), first_non_finite_16), n);
  const auto stored = store.bytes("ok");
  ASSERT_EQ(stored.size(), raw.size());
  EXPECT_EQ(std::memcmp(stored.data(), raw.data(), raw.size()), 0);
  EXPECT_EQ(store.read_bytes_into("bad", raw.data(), first_non_finite_16), 270000u);
  EXPECT_EQ(store.read_bytes_into("bad", raw.data()), n);  // no scan: nothing flagged
}

TEST(Safetensors, ShardedWriteAndRead) {
  TempDir dir;
  WriterOptions opt;
  opt.max_shard_bytes = 100;
  SafetensorsWriter w(dir.path(), opt);
  for (int i = 0; i < 5; ++i) {
    std::vector<float> v(16);  // 64 bytes each: one tensor per shard after the first fills
    std::iota(v.begin(), v.end(), static_cast<float>(i * 100));
    w.add_f32("t" + std::to_string(i), DType::F32, {4, 4}, v);
  }
  const auto files = w.finish();
  ASSERT_EQ(files.size(), 6u);
  EXPECT_EQ(files[0].filename(), "model-00001-of-00005.safetensors");
  EXPECT_EQ(files[4].filename(), "model-00005-of-00005.safetensors");
  EXPECT_EQ(files[5].filename(), "model.safetensors.index.json");
  auto store = TensorStore::open(dir.path());
  EXPECT_EQ(store.names().size(), 5u);
  EXPECT_EQ(store.read_f32("t3")[2], 302.0f);
  EXPECT_EQ(store.file_of("t3").filename(), "model-00004-of-00005.safetensors");
  // No temporary files left behind.
  for (const auto& e : fs::directory_iterator(dir.path())) {
    EXPECT_EQ(e.path().string().find(".tmp"), std::string::npos) << e.path();
  }
}

TEST(Safetensors, UnfinishedWriterLeavesNothing) {
  TempDir dir;
  {
    SafetensorsWriter w(dir.path());
    w.add_f32("x", DType::F32, {2}, std::vector<float>{1, 2});
  }
  EXPECT_TRUE(fs::is_empty(dir.path()));
}

// ----------------------------------------------------------------------------- corrupt files
void write_raw(const fs::path& p, const std::string& header, std::size_t data_bytes,
               std::int64_t length_override = -1) {
  std::ofstream out(p, std::ios::binary);
  const std::uint64_t n = length_override >= 0 ? static_cast<std::uint64_t>(length_override) : header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  std::string data(data_bytes, '\0');
  out.write(data.data(), static_cast<std::streamsize>(data.size()));
}

struct CorruptCase {
  const char* label;
  std::string header;
  std::size_t data_bytes;
  std::int64_t length_override;
  const char* expect;  // substring of the error message
};

void PrintTo(const CorruptCase& c, std::ostream* os) { *os << c.label; }

class CorruptSafetensors : public ::testing::TestWithParam<CorruptCase> {};

TEST_P(CorruptSafetensors, GivesItsOwnClearError) {
  const auto& c = GetParam();
  TempDir dir;
  const fs::path p = dir / "bad.safetensors";
  if (std::string(c.label) == "empty_file") {
    std::ofstream(p, std::ios::binary).write("abc", 3);
  } else {
    write_raw(p, c.header, c.data_bytes, c.length_override);
  }
  try {
    SafetensorsFile f(p);
    FAIL() << c.label << ": no error";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.label << ": " << msg;
    EXPECT_NE(msg.find("bad.safetensors"), std::string::npos) << c.label << ": " << msg;
  }
}

const std::string kOk = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";

INSTANTIATE_TEST_SUITE_P(
    Table, CorruptSafetensors,
    ::testing::Values(
        CorruptCase{"empty_file", "", 0, -1, "truncated"},
        CorruptCase{"length_past_eof", "{" + kOk + "}", 8, 5000, "past the end of the file"},
        CorruptCase{"huge_length", "{}", 0, std::int64_t{1} << 40, "exceeds"},
        CorruptCase{"not_json", "{nope", 0, -1, "not valid JSON"},
        CorruptCase{"not_object", "[1,2]", 0, -1, "does not start with"},
        CorruptCase{"unknown_dtype", R"({"a":{"dtype":"F8","shape":[2],"data_offsets":[0,2]}})", 2, -1, "unsupported dtype"},
        CorruptCase{"shape_size_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, -1, "needs 12 bytes"},
        CorruptCase{"negative_shape", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, -1, "negative or non-integer"},
        CorruptCase{"float_shape", R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8, -1, "negative or non-integer"},
        CorruptCase{"offsets_past_end", "{" + kOk + "}", 4, -1, "run past the end of the data"},
        CorruptCase{"overlap", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12, -1, "overlap"},
        CorruptCase{"duplicate_key", "{" + kOk + "," + kOk + "}", 8, -1, "twice"},
        CorruptCase{"reversed_offsets", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8, -1, "end before"},
        CorruptCase{"overflowing_shape", R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", 8, -1, "overflows"},
        CorruptCase{"missing_offsets", R"({"a":{"dtype":"F32","shape":[2]}})", 8, -1, "data_offsets"},
        CorruptCase{"bad_metadata", R"({"__metadata__":{"k":1}})", 0, -1, "__metadata__"}),
    [](const auto& info) { return std::string(info.param.label); });

TEST(Safetensors, MissingShardIsAClearError) {
  TempDir dir;
  write_raw(dir / "model-00001-of-00002.safetensors", "{" + kOk + "}", 8);
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}})";
  try {
    TensorStore::open(dir.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("shard 'model-00002-of-00002.safetensors'"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, TensorInTwoShardsIsAClearError) {
  TempDir dir;
  write_raw(dir / "s1.safetensors", "{" + kOk + "}", 8);
  write_raw(dir / "s2.safetensors", "{" + kOk + "}", 8);
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map":{"a":"s1.safetensors","x":"s2.safetensors"}})";
  try {
    TensorStore::open(dir.path());
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("two shards"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, IndexListingAnAbsentTensorIsAClearError) {
  TempDir dir;
  write_raw(dir / "s1.safetensors", "{" + kOk + "}", 8);
  std::ofstream(dir / "model.safetensors.index.json")
      << R"({"weight_map":{"a":"s1.safetensors","ghost":"s1.safetensors"}})";
  EXPECT_THROW(TensorStore::open(dir.path()), InputError);
}

}  // namespace
}  // namespace quant
