#include "targets.h"
#include "exit_codes.h"

#include <cstdlib>
#include <exception>
#include <fstream>
#include <string_view>
#include <vector>

#include "commands.h"
#include "fixtures.h"
#include "quant/formats/codec.h"
#include "quant/model/config.h"
#include "quant/core/error.h"
#include "quant/formats/ggml_quants.h"
#include "quant/io/gguf.h"
#include "quant/model/model.h"
#include "quant/io/safetensors.h"
#include "quant/model/tokenizer.h"

namespace quant::fuzz {

namespace {

namespace fs = std::filesystem;

void write_file(const fs::path& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!f) std::abort();
}

// A directory under `scratch` prepared once by `setup` (fixed per scratch directory).
fs::path prepared(const fs::path& scratch, const std::string& name, void (*setup)(const fs::path&)) {
  const fs::path d = scratch / name;
  if (!fs::exists(d / ".ready")) {
    fs::create_directories(d);
    setup(d);
    std::ofstream(d / ".ready") << "1";
  }
  return d;
}

// A .safetensors file (header JSON, offsets, dtypes, shapes), then every tensor converted to
// float as the quantizers read them.
void safetensors(const fs::path& scratch, const std::uint8_t* data, std::size_t size) {
  const fs::path path = scratch / "model.safetensors";
  write_file(path, data, size);
  const TensorStore store = TensorStore::open(path);
  for (const auto& name : store.names()) {
    const TensorInfo& t = store.get(name);
    if (t.numel() <= (1 << 20)) {
      const std::vector<float> v = store.read_f32(name);
      if (static_cast<std::int64_t>(v.size()) != t.numel()) std::abort();
    }
  }
}

// model.safetensors.index.json beside two valid shards (shard-a: "a", "b"; shard-b: "c").
void write_shards(const fs::path& dir) {
  const std::vector<float> v = {1.f, 2.f, 3.f, 4.f};
  for (const char* s : {"a", "b"}) fs::create_directories(dir / s);
  {
    SafetensorsWriter w(dir / "a", {.max_shard_bytes = 0, .base_name = "shard-a"});
    w.add_f32("a", DType::F32, {2, 2}, v);
    w.add_f32("b", DType::F16, {4}, v);
    w.finish();
  }
  {
    SafetensorsWriter w(dir / "b", {.max_shard_bytes = 0, .base_name = "shard-b"});
    w.add_f32("c", DType::BF16, {1, 4}, v);
    w.finish();
  }
  fs::rename(dir / "a" / "shard-a.safetensors", dir / "shard-a.safetensors");
  fs::rename(dir / "b" / "shard-b.safetensors", dir / "shard-b.safetensors");
}

void index(const fs::path& scratch, const std::uint8_t* data, std::size_t size) {
  const fs::path dir = prepared(scratch, "sharded", write_shards);
  write_file(dir / "model.safetensors.index.json", data, size);
  const TensorStore store = TensorStore::open(dir);
  for (const auto& name : store.names()) (void)store.read_f32(name);
}

// config.json, parsed alone and then checked against a fixed tiny checkpoint (hidden 32,
// 2 layers, 4 heads, 2 KV heads, vocabulary 96) as `quant` does before any work.
void config(const fs::path& scratch, const std::uint8_t* data, std::size_t size) {
  const fs::path dir = prepared(scratch, "model", [](const fs::path& d) { testing::write_tiny_model(d, {}); });
  write_file(dir / "config.json", data, size);
  (void)ModelConfig::load(dir);
  (void)formats::open_model(dir);
}

// tokenizer.json (BPE vocabularies, merges, pre-tokenizer regexes, added tokens), then
// encoding a fixed text with special tokens, Unicode and bytes that are not UTF-8.
void tokenizer(const fs::path& scratch, const std::uint8_t* data, std::size_t size) {
  const fs::path path = scratch / "tokenizer.json";
  write_file(path, data, size);
  const auto tok = load_tokenizer_json(path);
  static constexpr std::string_view text = "Hello world, <s> it's 3.14 caf\xc3\xa9 \xe4\xb8\xad\xe6\x96\x87 \xff\xfe\n\n  x</s>";
  for (std::int32_t id : tok->encode(text)) {
    if (id < 0 || id >= tok->vocab_size()) std::abort();
  }
}

// A GGUF file (header, metadata values and arrays, tensor infos, alignment, offsets), then
// every tensor dequantized; then the file as `quant eval` reads it: its tokenizer encoding a
// text, and the model it maps to with every tensor loaded.
void gguf(const fs::path& scratch, const std::uint8_t* data, std::size_t size) {
  const fs::path path = scratch / "model.gguf";
  write_file(path, data, size);
  {
    const gguf::File f = gguf::File::open(path);
    for (const auto& [key, value] : f.metadata) (void)value.to_string();
    for (const auto& t : f.tensors) {
      if (t.numel() <= (1 << 20)) (void)gguf::dequantize_tensor(f, t.name);
    }
  }
  try {
    const auto tok = Tokenizer::load(path);
    for (std::int32_t id : tok->encode("Hello world, it's 3.14 caf\xc3\xa9\n\n  x")) {
      if (id < 0 || id >= tok->vocab_size()) std::abort();
    }
  } catch (const quant::InputError&) {
  }
  const Model m = formats::open_model(path, true);
  for (const auto& name : m.store().names()) {
    if (m.store().get(name).numel() <= (1 << 20)) (void)m.store().read_f32(name);
  }
}

// A `quant run` recipe, validated as `quant run --dry-run` does; a tiny model sits at "m"
// beside it so that jobs naming it reach the field checks.
void recipe(const fs::path& scratch, const std::uint8_t* data, std::size_t size) {
  const fs::path dir = prepared(scratch, "recipes", [](const fs::path& d) { testing::write_tiny_model(d / "m", {}); });
  const fs::path path = dir / "recipe.json";
  write_file(path, data, size);
  (void)cli::validate_recipe(path);
}

}  // namespace

const std::map<std::string, Target>& targets() {
  static const std::map<std::string, Target> t = {{"safetensors", safetensors}, {"index", index},
                                                  {"config", config},           {"tokenizer", tokenizer},
                                                  {"gguf", gguf},               {"recipe", recipe}};
  return t;
}

std::string run_one(Target target, const fs::path& scratch, const std::uint8_t* data, std::size_t size) {
  try {
    target(scratch, data, size);
  } catch (const quant::Error& e) {
    if (cli::exit_code(e) == cli::kExitInternal) return std::string("internal error: ") + e.what();
  } catch (const std::exception& e) {
    return std::string("unexpected exception: ") + e.what();
  }
  return {};
}

}  // namespace quant::fuzz
