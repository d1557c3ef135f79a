// The user's data is never destroyed (issue: "Never destroy the user's data"): an output may not
// equal, contain or lie inside an input; --force replaces only what quant wrote; one run per
// output (a lock); bounded JSON; configs checked against tensors; honest gates; a journal that is
// verified, not trusted; device nodes written in place; repeated signals coalesced; memory
// estimated before work; recipes that cannot overwrite themselves. Each case failed before.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>

#include <fmt/format.h>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/io/safetensors.h"

namespace quant {
namespace {

using testing::run_quant;
using testing::TempDir;

std::string QUANT_BINARY_FOR_TESTS() {
  const char* other = std::getenv("QUANT_TEST_BINARY");
  return "'" + std::string(other && *other ? other : QUANT_BINARY) + "'";
}

struct DataSafety : ::testing::Test {
  TempDir dir;
  fs::path model;
  std::string calib;
  void SetUp() override {
    testing::TinyModelSpec spec;
    spec.kv_heads = 4;
    model = dir / "M";
    testing::write_tiny_model(model, spec);
    testing::write_tiny_tokenizer(model, spec.vocab);
    std::string t;
    for (int i = 0; i < 600; ++i) t += std::to_string((i * 13 + 5) % 96) + " ";
    write_file_atomic(dir / "calib.txt", t);
    calib = (dir / "calib.txt").string();
  }
  // Every file of the model, with its bytes: the model must be unchanged by a refused command.
  std::map<std::string, std::string> snapshot() const {
    std::map<std::string, std::string> m;
    for (const auto& e : fs::directory_iterator(model)) m[e.path().filename().string()] = read_text_file(e.path());
    return m;
  }
  void expect_refused(const std::string& args, const std::string& message, int rc = 2) {
    const auto before = snapshot();
    const auto r = run_quant(args);
    EXPECT_EQ(r.rc, rc) << args << "\n" << r.err;
    EXPECT_NE(r.err.find(message), std::string::npos) << args << "\n" << r.err;
    EXPECT_EQ(snapshot(), before) << args << ": the input changed";
  }
};

TEST_F(DataSafety, OutputThatIsOrHoldsTheInputIsRefused) {
  const std::string m = model.string();
  expect_refused("rtn " + m + " -o " + m + "/. --force", "is the input");
  expect_refused("rtn " + m + " -o " + m + " --force", "is the input");
  expect_refused("rtn " + m + " -o " + m + "/../M/sub/.. --force", "is the input");
  expect_refused("rtn " + m + " -o " + m + "/.. --force", "would contain the input");
  expect_refused("rtn " + m + " -o " + m + "/q --force", "lies inside the input");
  expect_refused("gguf " + m + " -o " + m + "/model.safetensors --force", "lies inside the input");
  expect_refused("gguf " + m + " -o " + (dir / "x.gguf").string() + " --dense-out " + m + " --force", "is the input");
  expect_refused("gguf " + m + " --calib-tokens " + calib + " -o " + calib + " --force", "is the input");
  expect_refused("gptq " + m + " --calib-tokens " + calib + " -o " + calib + " --force", "is the input");
  // Through a symlink to the model.
  fs::create_directory_symlink(model, dir / "link");
  expect_refused("rtn " + m + " -o " + (dir / "link").string() + " --force", "is the input");
  EXPECT_FALSE(fs::exists(dir / "M.partial"));
}

TEST_F(DataSafety, ForceReplacesOnlyQuantsOwnOutputs) {
  const std::string m = model.string();
  const fs::path foreign = dir / "photos";
  fs::create_directory(foreign);
  write_file_atomic(foreign / "holiday.jpg", "precious");
  auto r = run_quant("rtn " + m + " -o " + foreign.string() + " --force");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("was not written by quant"), std::string::npos) << r.err;
  EXPECT_EQ(read_text_file(foreign / "holiday.jpg"), "precious");
  // A regular file where a directory output goes: never replaced.
  write_file_atomic(dir / "notes", "mine");
  r = run_quant("rtn " + m + " -o " + (dir / "notes").string() + " --force --replace-foreign");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(read_text_file(dir / "notes"), "mine");
  // quant's own output is replaced by --force; a foreign one only with --replace-foreign too.
  const std::string q = (dir / "q").string();
  ASSERT_EQ(run_quant("rtn " + m + " -o " + q).rc, 0);
  r = run_quant("rtn " + m + " -o " + q + " -b 8 --force");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(fs::exists(q + ".replaced"));
  r = run_quant("rtn " + m + " -o " + foreign.string() + " --force --replace-foreign");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(fs::exists(foreign / "holiday.jpg"));
  // GGUF files: quant's own (general.quantized_by) are replaceable, a foreign file is not.
  write_file_atomic(dir / "other.gguf", "not ours");
  r = run_quant("gguf " + m + " -t f16 -o " + (dir / "other.gguf").string() + " --force");
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_EQ(read_text_file(dir / "other.gguf"), "not ours");
  ASSERT_EQ(run_quant("gguf " + m + " -t f16 -o " + (dir / "a.gguf").string()).rc, 0);
  EXPECT_EQ(run_quant("gguf " + m + " -t q8_0 -o " + (dir / "a.gguf").string() + " --force").rc, 0);
}

TEST_F(DataSafety, SecondRunOnTheSameOutputIsRefusedWhileTheFirstHoldsIt) {
  const fs::path out = dir / "q";
  OutputLock held(resolve_output_path(out));  // as a running quant holds it
  const auto r = run_quant("rtn " + model.string() + " -o " + out.string());
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("in use by pid"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(DataSafety, LockIsReleasedAndRemoved) {
  const fs::path out = resolve_output_path(dir / "q");
  { OutputLock a(out); }
  EXPECT_FALSE(fs::exists(out.string() + ".lock"));
  OutputLock b(out);  // free again
  EXPECT_THROW({ OutputLock c(out); }, UsageError);
}

TEST_F(DataSafety, DeeplyNestedJsonIsRefusedNotACrash) {
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  write_file_atomic(model / "tokenizer.json", deep);
  auto r = run_quant("eval " + model.string() + " --text " + calib);
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("nested deeper than 64"), std::string::npos) << r.err;
  std::string cfg = read_text_file(model / "config.json");
  cfg.insert(cfg.rfind('}'), ", \"x\": " + std::string(1000, '[') + std::string(1000, ']'));
  write_file_atomic(model / "config.json", cfg);
  r = run_quant("inspect " + model.string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("config.json: JSON nested deeper"), std::string::npos) << r.err;
}

TEST_F(DataSafety, ConfigLayerCountIsCheckedAgainstTensorsFirst) {
  std::string cfg = read_text_file(model / "config.json");
  const auto at = cfg.find("\"num_hidden_layers\"");
  ASSERT_NE(at, std::string::npos);
  const auto colon = cfg.find(':', at), end = cfg.find_first_of(",}", colon);
  cfg.replace(colon + 1, end - colon - 1, "1000000000");
  write_file_atomic(model / "config.json", cfg);
  const auto r = run_quant("inspect " + model.string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("num_hidden_layers = 1000000000, but the checkpoint holds tensors for 2 layers"), std::string::npos) << r.err;
}

TEST_F(DataSafety, RopeScalingFactorZeroIsRefused) {
  std::string cfg = read_text_file(model / "config.json");
  cfg.insert(cfg.rfind('}'), ", \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 0}");
  write_file_atomic(model / "config.json", cfg);
  const auto r = run_quant("inspect " + model.string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("rope_scaling.factor' must be a positive finite"), std::string::npos) << r.err;
}

TEST_F(DataSafety, HugeSafetensorsHeaderParsesInLinearTime) {
  // 100k entries took > 9 minutes with nlohmann's callback parser (quadratic); now well under a
  // second. The bound here is generous: it guards the complexity, not a speed claim.
  std::string h = "{";
  std::uint64_t off = 0;
  for (int i = 0; i < 100000; ++i) {
    h += fmt::format("{}\"t.{}\":{{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[{},{}]}}", i ? "," : "", i, off, off + 4);
    off += 4;
  }
  h += "}";
  const std::uint64_t n = h.size();
  std::string file(reinterpret_cast<const char*>(&n), 8);
  file += h + std::string(off, '\0');
  write_file_atomic(dir / "big.safetensors", file);
  const auto t0 = std::chrono::steady_clock::now();
  const SafetensorsFile f(dir / "big.safetensors");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(f.tensors().size(), 100000u);
  EXPECT_LT(s, 30.0);
}

TEST_F(DataSafety, NonFiniteMetricsFailEveryGate) {
  // Final-norm weights of 1e30 overflow the logits to inf: perplexity NaN. Weights are finite,
  // so the model loads.
  const TensorStore src = TensorStore::open(model);
  {
    fs::create_directory(dir / "nan");
    SafetensorsWriter w(dir / "nan");
    for (const auto& name : src.names()) {
      const TensorInfo& t = src.get(name);
      std::vector<float> v = src.read_f32(name);
      if (name == "model.norm.weight") std::fill(v.begin(), v.end(), 1e30f);
      w.add_f32(name, DType::F32, t.shape, v);
    }
    w.finish();
  }
  for (const char* f : {"config.json", "tokenizer.json"}) fs::copy_file(model / f, dir / "nan" / f);
  const std::string cmd = "eval " + (dir / "nan").string() + " --tokens " + calib + " --ctx 32 --max-windows 2 --json";
  auto r = run_quant(cmd + " --max-ppl 1000");
  EXPECT_EQ(r.rc, 7) << r.err;
  EXPECT_NE(r.out.find("\"gate\": \"fail\""), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("non-finite metric fails every gate"), std::string::npos) << r.err;
  r = run_quant(cmd + " --base " + model.string() + " --max-ppl-increase 5");
  EXPECT_EQ(r.rc, 7) << r.err;
  r = run_quant(cmd);  // no gate: reported, warned, not failed
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("\"gate\": \"none\""), std::string::npos) << r.out;
}

TEST_F(DataSafety, NonsenseValuesAreRefused) {
  const std::string m = model.string();
  expect_refused("gptq " + m + " --calib-tokens " + calib + " --damp nan -o " + (dir / "q").string(), "--damp must be in [0, 1)");
  expect_refused("rtn " + m + " --target-bpw nan -o " + (dir / "q").string(), "--target-bpw must be a positive");
  expect_refused("eval " + m + " --tokens " + calib + " --max-ppl nan", "--max-ppl must be a positive finite");
  expect_refused("eval " + m + " --tokens " + calib + " --base " + m + " --max-ppl-increase nan", "--max-ppl-increase must be a finite");
  auto r = run_quant("eval " + m + " --text " + calib + " --limit-bytes 0");
  EXPECT_EQ(r.rc, 2) << r.err;
  r = run_quant("rtn " + m + " -o " + (dir / "q").string() + " --journal-limit 0");
  EXPECT_EQ(r.rc, 2) << r.err;
}

TEST_F(DataSafety, MemoryIsEstimatedBeforeWork) {
  const auto r = run_quant("gptq " + model.string() + " --calib-tokens " + calib + " --nsamples 2000000000 --seqlen 64 -o " + (dir / "q").string());
  EXPECT_EQ(r.rc, 2) << r.err;
  EXPECT_NE(r.err.find("--no-memory-check"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("GB of memory but"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir / "q.partial"));
}

TEST_F(DataSafety, MaxWindowsTokenizesOnlyWhatItNeeds) {
  std::string text;
  for (int i = 0; i < 40000; ++i) text += "abc def ghi ";
  write_file_atomic(dir / "long.txt", text);
  const auto r = run_quant("eval " + model.string() + " --text " + (dir / "long.txt").string() + " --ctx 16 --max-windows 2");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.err.find("--max-windows: tokenized the first"), std::string::npos) << r.err;
}

TEST_F(DataSafety, NonRegularInputsAreRefusedNotOpened) {
  // A FIFO named as the shard used to block open() forever.
  fs::rename(model / "model.safetensors", dir / "real.safetensors");
  ASSERT_EQ(::mkfifo((model / "model.safetensors").c_str(), 0600), 0);
  auto r = run_quant("inspect " + model.string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("not a regular file (a FIFO)"), std::string::npos) << r.err;
  // A shard that is a symlink to a text file: named as text, not a wild "header length".
  fs::remove(model / "model.safetensors");
  fs::create_symlink(calib, model / "model.safetensors");
  r = run_quant("inspect " + model.string());
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("not a safetensors file: it begins with text"), std::string::npos) << r.err;
}

TEST_F(DataSafety, DevicesAreWrittenInPlaceNeverReplaced) {
  // A FIFO stands for a device (as root, `-o /dev/null --force` used to replace /dev/null with a
  // regular file; the test does not risk the machine's /dev/null on a regression).
  const fs::path fifo = dir / "pipe";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  const std::string script = "cat '" + fifo.string() + "' > '" + (dir / "received").string() + "' & " + QUANT_BINARY_FOR_TESTS() +
                             " gguf '" + model.string() + "' -t q8_0 -o '" + fifo.string() + "' --force; rc=$?; wait; exit $rc";
  write_file_atomic(dir / "fifo.sh", script);
  const int status = std::system(("bash '" + (dir / "fifo.sh").string() + "'").c_str());
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
  struct stat st {};
  ASSERT_EQ(::stat(fifo.c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
  EXPECT_EQ(read_text_file(dir / "received").substr(0, 4), "GGUF");
  const auto r = run_quant("gguf " + model.string() + " -t q8_0 -o -");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_EQ(r.out.substr(0, 4), "GGUF");
}

TEST_F(DataSafety, RepeatedSignalsAreOneStopAndCleanupRuns) {
  // Two SIGTERMs at once (GNU timeout signals the process, then its group): the second used to
  // kill quant (SA_RESETHAND, exit 143) with `.partial/` left behind.
  const std::string out = (dir / "q").string();
  setenv("QUANT_FAULT_SIGTERM_AT", "5", 1);
  setenv("QUANT_FAULT_SIGNALS", "2", 1);
  const auto r = run_quant("rtn " + model.string() + " -o " + out + " -g 32");
  unsetenv("QUANT_FAULT_SIGTERM_AT");
  unsetenv("QUANT_FAULT_SIGNALS");
  EXPECT_EQ(r.rc, 130) << r.err;
  EXPECT_FALSE(fs::exists(out + ".partial"));
  EXPECT_FALSE(fs::exists(out + ".lock"));
}

TEST_F(DataSafety, TwoRealSignalsAtOnceStillCleanUp) {
  // As GNU timeout does: SIGTERM to the process, then to its group, while a GPTQ run is working
  // (50 ms apart here, so the second is not merged into the still-pending first). Before, the
  // second one killed quant (exit 143) and left `.partial/` behind.
  testing::TinyModelSpec spec;
  spec.hidden = 256;
  spec.intermediate = 512;
  spec.layers = 6;
  spec.kv_heads = 4;
  spec.ctx = 512;
  testing::write_tiny_model(dir / "big", spec);
  const std::string out = (dir / "q").string();
  const std::string script = QUANT_BINARY_FOR_TESTS() + " gptq '" + (dir / "big").string() + "' --calib-tokens '" + calib +
                             "' --nsamples 128 --seqlen 512 -o '" + out + "' 2>/dev/null & pid=$!; " +
                             "while [ ! -d '" + out + ".partial' ] && kill -0 $pid 2>/dev/null; do sleep 0.002; done; " +
                             "kill -TERM $pid; sleep 0.05; kill -TERM $pid; wait $pid; exit $?";
  write_file_atomic(dir / "signal.sh", script);
  const int status = std::system(("bash '" + (dir / "signal.sh").string() + "'").c_str());
  EXPECT_EQ(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 130);
  EXPECT_FALSE(fs::exists(out + ".partial"));
  EXPECT_FALSE(fs::exists(out));
}

struct KillAfterLayer {
  explicit KillAfterLayer(int layer) { setenv("QUANT_FAULT_KILL_AFTER_LAYER", std::to_string(layer).c_str(), 1); }
  ~KillAfterLayer() { unsetenv("QUANT_FAULT_KILL_AFTER_LAYER"); }
};

TEST_F(DataSafety, DamagedJournalIsRecomputedNotTrusted) {
  const std::string cmd = "gptq " + model.string() + " --calib-tokens " + calib + " --nsamples 4 --seqlen 64 -g 32 -o ";
  ASSERT_EQ(run_quant(cmd + (dir / "full").string()).rc, 0);
  const fs::path out = dir / "q", journal = dir / "q.resume";
  for (const std::string damage : {"flip", "drop-entry", "truncate"}) {
    {
      KillAfterLayer kill(0);
      EXPECT_NE(run_quant(cmd + out.string()).rc, 0);
    }
    ASSERT_TRUE(fs::exists(journal / "state.json"));
    if (damage == "flip") {
      std::string b = read_text_file(journal / "layer-0" / "model.safetensors");
      b[b.size() - 3] ^= 0x10;
      write_file_atomic(journal / "layer-0" / "model.safetensors", b);
    } else if (damage == "drop-entry") {
      std::string j = read_text_file(journal / "layer-0" / "journal.json");
      const auto at = j.find("\"order\":[\"");
      ASSERT_NE(at, std::string::npos) << j;
      j.erase(at + 9, j.find(',', at + 9) - at - 8);  // first name and its comma
      write_file_atomic(journal / "layer-0" / "journal.json", j);
    } else {
      const std::string j = read_text_file(journal / "layer-0" / "journal.json");
      write_file_atomic(journal / "layer-0" / "journal.json", j.substr(0, j.size() / 2));
    }
    const auto r = run_quant(cmd + out.string());
    ASSERT_EQ(r.rc, 0) << damage << "\n" << r.err;
    EXPECT_NE(r.err.find("not trusting it"), std::string::npos) << damage << "\n" << r.err;
    EXPECT_NE(r.err.find("layer-0/"), std::string::npos) << damage << "\n" << r.err;
    EXPECT_EQ(read_text_file(out / "model.safetensors"), read_text_file(dir / "full" / "model.safetensors")) << damage;
    fs::remove_all(out);
  }
}

TEST_F(DataSafety, RecipesCannotOverwriteThemselves) {
  auto recipe = [&](const std::string& jobs) {
    write_file_atomic(dir / "r.json", "{\"jobs\": [" + jobs + "]}");
    return run_quant("run " + (dir / "r.json").string() + " --dry-run");
  };
  const std::string m = model.string();
  auto r = recipe("{\"method\": \"rtn\", \"model\": \"" + m + "\", \"output\": \"a\", \"model\": \"" + (dir / "other").string() + "\"}");
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("key 'model' appears twice"), std::string::npos) << r.err;
  r = recipe("{\"name\": 5, \"method\": \"rtn\", \"model\": \"" + m + "\", \"output\": \"a\"}");
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("field 'name' must be a string"), std::string::npos) << r.err;
  r = recipe("{\"method\": \"rtn\", \"model\": \"" + m + "\", \"output\": \"out\"}, {\"method\": \"rtn\", \"model\": \"" + m +
             "\", \"output\": \"out/inner\"}");
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("lies inside output"), std::string::npos) << r.err;
  r = recipe("{\"method\": \"rtn\", \"model\": \"" + m + "\", \"output\": \"" + m + "\"}");
  EXPECT_EQ(r.rc, 3) << r.err;
  EXPECT_NE(r.err.find("is the input"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace quant
