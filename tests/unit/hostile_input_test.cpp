// Hostile input beyond safetensors (whose table is in safetensors_test.cpp): corrupt GGUF files
// and tokenizer.json files each get their own clear error naming the file, and every input the
// fuzzers ever crashed on (tests/fuzz/regressions/) or start from (tests/fuzz/corpus/) is
// accepted or refused cleanly by the normal build.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "fixtures.h"
#include "fuzz/targets.h"
#include "quant/core/error.h"
#include "quant/io/gguf.h"
#include "quant/io/io.h"
#include "quant/model/tokenizer.h"

namespace quant {
namespace {

using testing::TempDir;

std::vector<std::uint8_t> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

TEST(FuzzRegressions, EveryRecordedInputIsAcceptedOrRefusedCleanly) {
  const fs::path root = QUANT_FUZZ_DIR;
  int replayed = 0;
  for (const char* set : {"regressions", "corpus"}) {
    for (const auto& [name, target] : fuzz::targets()) {
      const fs::path dir = root / set / name;
      if (!fs::is_directory(dir)) continue;
      TempDir scratch;
      for (const auto& e : fs::directory_iterator(dir)) {
        const auto bytes = read_bytes(e.path());
        EXPECT_EQ(fuzz::run_one(target, scratch.path(), bytes.data(), bytes.size()), "") << e.path();
        ++replayed;
      }
    }
  }
  EXPECT_GE(replayed, 20) << "the seed corpus went missing from " << root;
}

// ---- GGUF ----------------------------------------------------------------------------------

// Builds GGUF bytes field by field.
struct G {
  std::string b;
  template <typename T>
  G& pod(T v) {
    b.append(reinterpret_cast<const char*>(&v), sizeof(T));
    return *this;
  }
  G& str(const std::string& s) { return pod<std::uint64_t>(s.size()), b += s, *this; }
  G& header(std::uint32_t version, std::uint64_t n_tensors, std::uint64_t n_kv) {
    b += "GGUF";
    return pod(version).pod(n_tensors).pod(n_kv);
  }
  G& kv_u32(const std::string& k, std::uint32_t v) { return str(k).pod<std::uint32_t>(4).pod(v); }
  G& tensor(const std::string& name, std::vector<std::uint64_t> ne, std::uint32_t type, std::uint64_t offset) {
    str(name).pod<std::uint32_t>(static_cast<std::uint32_t>(ne.size()));
    for (auto d : ne) pod(d);
    return pod(type).pod(offset);
  }
  G& pad(std::size_t align = 32) { return b.resize((b.size() + align - 1) / align * align, '\0'), *this; }
  G& data(std::size_t n) { return b.append(n, '\0'), *this; }
};

struct GgufCase {
  const char* label;
  std::string bytes;
  const char* expect;
};
void PrintTo(const GgufCase& c, std::ostream* os) { *os << c.label; }

class CorruptGguf : public ::testing::TestWithParam<GgufCase> {};

TEST_P(CorruptGguf, GivesItsOwnClearError) {
  const auto& c = GetParam();
  TempDir dir;
  const fs::path p = dir / "bad.gguf";
  write_file_atomic(p, c.bytes);
  try {
    gguf::File::open(p);
    FAIL() << c.label << ": no error";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.label << ": " << msg;
    EXPECT_NE(msg.find("bad.gguf"), std::string::npos) << c.label << ": " << msg;
  }
}

G one_f32(std::uint64_t offset = 0, std::uint64_t data = 16) {
  G g;
  g.header(3, 1, 0).tensor("t", {4}, 0, offset).pad().data(data);
  return g;
}

INSTANTIATE_TEST_SUITE_P(
    Table, CorruptGguf,
    ::testing::Values(
        GgufCase{"short_file", "GG", "bad magic"},
        GgufCase{"bad_magic", "GGUX" + G{}.pod<std::uint32_t>(3).pod<std::uint64_t>(0).pod<std::uint64_t>(0).b, "bad magic"},
        GgufCase{"version_1", G{}.header(1, 0, 0).b, "version 1 is not supported"},
        GgufCase{"truncated_header", "GGUF" + G{}.pod<std::uint32_t>(3).b, "truncated GGUF file while reading the tensor count"},
        GgufCase{"kv_count_lie", G{}.header(3, 0, 1ull << 40).b, "metadata entries cannot fit"},
        GgufCase{"tensor_count_lie", G{}.header(3, 1ull << 40, 0).b, "tensors cannot fit"},
        GgufCase{"key_length_lie", G{}.header(3, 0, 1).pod<std::uint64_t>(1ull << 60).b + std::string(16, 'k'), "truncated GGUF file while reading a metadata key"},
        GgufCase{"unknown_value_type", G{}.header(3, 0, 1).str("k").pod<std::uint32_t>(13).pod<std::uint64_t>(0).b, "unknown value type 13"},
        GgufCase{"bool_not_0_or_1", G{}.header(3, 0, 1).str("k").pod<std::uint32_t>(7).pod<std::uint8_t>(2).b + std::string(16, '\0'), "neither 0 nor 1"},
        GgufCase{"nested_array", G{}.header(3, 0, 1).str("k").pod<std::uint32_t>(9).pod<std::uint32_t>(9).pod<std::uint64_t>(1).pod<std::uint32_t>(4).pod<std::uint64_t>(0).b, "nested arrays"},
        GgufCase{"array_count_lie", G{}.header(3, 0, 1).str("k").pod<std::uint32_t>(9).pod<std::uint32_t>(4).pod<std::uint64_t>(1ull << 50).b + std::string(16, '\0'), "does not fit in the file"},
        GgufCase{"duplicate_key", G{}.header(3, 0, 2).kv_u32("k", 1).kv_u32("k", 2).b, "metadata key 'k' appears twice"},
        GgufCase{"alignment_not_power_of_two", G{}.header(3, 0, 1).kv_u32("general.alignment", 24).b, "power-of-two"},
        GgufCase{"alignment_zero", G{}.header(3, 0, 1).kv_u32("general.alignment", 0).b, "power-of-two"},
        GgufCase{"zero_dimensions", G{}.header(3, 1, 0).tensor("t", {}, 0, 0).pad().data(64).b, "has 0 dimensions"},
        GgufCase{"five_dimensions", G{}.header(3, 1, 0).tensor("t", {1, 1, 1, 1, 1}, 0, 0).pad().data(64).b, "has 5 dimensions"},
        GgufCase{"dimension_zero", G{}.header(3, 1, 0).tensor("t", {4, 0}, 0, 0).pad().data(64).b, "has dimension 1 = 0"},
        GgufCase{"dimension_product_overflow", G{}.header(3, 1, 0).tensor("t", {1ull << 40, 1ull << 40}, 0, 0).pad().data(64).b, "implausibly large"},
        GgufCase{"unknown_ggml_type", G{}.header(3, 1, 0).tensor("t", {32}, 99, 0).pad().data(64).b, "ggml type 99"},
        GgufCase{"row_not_whole_blocks", G{}.header(3, 1, 0).tensor("t", {20}, 2, 0).pad().data(64).b, "not whole Q4_0 blocks"},
        GgufCase{"misaligned_offset", one_f32(4).b, "offset 4 is not aligned to 32"},
        GgufCase{"duplicate_tensor", G{}.header(3, 2, 0).tensor("t", {4}, 0, 0).tensor("t", {4}, 0, 32).pad().data(64).b, "tensor 't' appears twice"},
        GgufCase{"data_past_end", one_f32(0, 8).b, "runs past the end of the file"},
        GgufCase{"offset_past_end", one_f32(1ull << 62).b, "runs past the end of the file"},
        GgufCase{"overlap", G{}.header(3, 2, 0).tensor("a", {16}, 0, 0).tensor("b", {16}, 0, 32).pad().data(128).b, "overlap"}),
    [](const auto& info) { return std::string(info.param.label); });

// ---- tokenizer.json ------------------------------------------------------------------------

struct TokCase {
  const char* label;
  std::string json;
  const char* expect;
};
void PrintTo(const TokCase& c, std::ostream* os) { *os << c.label; }

class CorruptTokenizerJson : public ::testing::TestWithParam<TokCase> {};

// Loading (and, for inputs that load, encoding "hello") fails with an InputError naming the file.
TEST_P(CorruptTokenizerJson, GivesItsOwnClearError) {
  const auto& c = GetParam();
  TempDir dir;
  const fs::path p = dir / "tokenizer.json";
  write_file_atomic(p, c.json);
  try {
    const auto tok = load_tokenizer_json(p);
    tok->encode("hello");
    FAIL() << c.label << ": no error";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(c.expect), std::string::npos) << c.label << ": " << msg;
    EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << c.label << ": " << msg;
  }
}

const std::string kVocab = R"("vocab":{"h":0,"e":1,"l":2,"o":3})";

INSTANTIATE_TEST_SUITE_P(
    Table, CorruptTokenizerJson,
    ::testing::Values(
        TokCase{"empty", "", "not valid JSON"},
        TokCase{"not_json", "{\"model\":", "not valid JSON"},
        TokCase{"no_model", R"({"version":"1.0"})", "missing 'model'"},
        TokCase{"unigram", R"({"model":{"type":"Unigram","vocab":[["a",0.0]]}})", "unsupported tokenizer model type 'Unigram'"},
        TokCase{"model_type_not_string", R"({"model":{"type":7,)" + kVocab + "}}", "malformed tokenizer.json"},
        TokCase{"vocab_list", R"({"model":{"type":"BPE","vocab":[1,2]}})", "model.vocab must be an object"},
        TokCase{"negative_id", R"({"model":{"type":"BPE","vocab":{"a":-1}}})", "model.vocab['a'] is not a valid id"},
        TokCase{"id_not_integer", R"({"model":{"type":"BPE","vocab":{"a":"0"}}})", "model.vocab['a'] is not a valid id"},
        TokCase{"merge_without_space", R"({"model":{"type":"BPE",)" + kVocab + R"(,"merges":["he"]}})", "merge 0 'he' is not 'a b'"},
        TokCase{"merge_wrong_shape", R"({"model":{"type":"BPE",)" + kVocab + R"(,"merges":[["h","e","l"]]}})", "merge 0 is neither"},
        TokCase{"byte_fallback_string", R"({"model":{"type":"BPE",)" + kVocab + R"(,"byte_fallback":"yes"}})", "malformed tokenizer.json"},
        TokCase{"wordpiece_suffix", R"({"model":{"type":"BPE",)" + kVocab + R"(,"continuing_subword_prefix":"##"}})", "'continuing_subword_prefix' is not supported"},
        TokCase{"added_token_without_id", R"({"model":{"type":"BPE",)" + kVocab + R"(},"added_tokens":[{"content":"<s>"}]})", "needs 'id' and 'content'"},
        TokCase{"added_token_negative_id", R"({"model":{"type":"BPE",)" + kVocab + R"(},"added_tokens":[{"id":-5,"content":"<s>"}]})", "has id -5"},
        TokCase{"unknown_normalizer", R"({"model":{"type":"BPE",)" + kVocab + R"(},"normalizer":{"type":"Lowercase"}})", "unsupported normalizer type 'Lowercase'"},
        TokCase{"unknown_pre_tokenizer", R"({"model":{"type":"BPE",)" + kVocab + R"(},"pre_tokenizer":{"type":"Whitespace"}})", "unsupported pre_tokenizer type 'Whitespace'"},
        TokCase{"bad_regex", R"({"model":{"type":"BPE",)" + kVocab + R"(},"pre_tokenizer":{"type":"Split","pattern":{"Regex":"(unclosed"},"behavior":"Isolated"}})", "does not compile"},
        TokCase{"split_behavior", R"({"model":{"type":"BPE",)" + kVocab + R"(},"pre_tokenizer":{"type":"Split","pattern":{"String":" "},"behavior":"Contiguous"}})", "Split behavior 'Contiguous' is not supported"},
        TokCase{"unknown_symbol_without_unk", R"({"model":{"type":"BPE","vocab":{"h":0,"e":1}}})", "is not in the vocabulary and there is no unk_token"}),
    [](const auto& info) { return std::string(info.param.label); });

}  // namespace
}  // namespace quant
