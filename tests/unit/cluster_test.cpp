// quant run across workers (issue 26): shards from --shard, Slurm or Kubernetes; chains kept in
// one shard; retried shards skip finished jobs; merged reports; job estimates; the lock's
// stale-claim rule for filesystems whose locks are per host.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cli_helpers.h"
#include "fixtures.h"
#include "quant/core/error.h"
#include "quant/io/io.h"
#include "quant/pipeline/estimate.h"
#include "quant/pipeline/recipe.h"

namespace quant {
namespace {

using nlohmann::json;
using testing::TempDir;

std::function<const char*(const char*)> env_of(const std::map<std::string, std::string>& vars) {
  return [vars](const char* name) -> const char* {
    const auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(Shard, ParsesKOfNAndRefusesTheRest) {
  const Shard s = parse_shard("2/5");
  EXPECT_EQ(s.index, 2u);
  EXPECT_EQ(s.count, 5u);
  for (const char* bad : {"5/5", "1/0", "3", "-1/4", "a/2", "1/2x", "/2"}) EXPECT_THROW(parse_shard(bad), UsageError) << bad;
}

TEST(Shard, ComesFromSlurmOrKubernetes) {
  // Slurm: task ids need not start at 0 (--array=4-6).
  auto s = shard_from_environment(0, env_of({{"SLURM_ARRAY_TASK_ID", "5"}, {"SLURM_ARRAY_TASK_MIN", "4"}, {"SLURM_ARRAY_TASK_COUNT", "3"}}));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->index, 1u);
  EXPECT_EQ(s->count, 3u);
  EXPECT_NE(s->source.find("SLURM_ARRAY_TASK_ID=5"), std::string::npos);
  EXPECT_THROW(shard_from_environment(0, env_of({{"SLURM_ARRAY_TASK_ID", "6"}, {"SLURM_ARRAY_TASK_MIN", "0"}, {"SLURM_ARRAY_TASK_COUNT", "4"},
                                                 {"SLURM_ARRAY_TASK_STEP", "2"}})),
               UsageError);  // --array=0-6:2 is not contiguous
  EXPECT_THROW(shard_from_environment(0, env_of({{"SLURM_ARRAY_TASK_ID", "9"}, {"SLURM_ARRAY_TASK_MIN", "0"}, {"SLURM_ARRAY_TASK_COUNT", "4"}})),
               UsageError);  // a sparse list (--array=0,3,7,9)
  EXPECT_THROW(shard_from_environment(0, env_of({{"SLURM_ARRAY_TASK_ID", "1"}})), UsageError);
  // Kubernetes: the index from the Job, the count from QUANT_SHARDS or --shards.
  s = shard_from_environment(0, env_of({{"JOB_COMPLETION_INDEX", "2"}, {"QUANT_SHARDS", "3"}}));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->index, 2u);
  EXPECT_EQ(s->count, 3u);
  s = shard_from_environment(4, env_of({{"JOB_COMPLETION_INDEX", "3"}, {"QUANT_SHARDS", "3"}}));
  ASSERT_TRUE(s);
  EXPECT_EQ(s->count, 4u);  // --shards wins
  EXPECT_THROW(shard_from_environment(0, env_of({{"JOB_COMPLETION_INDEX", "2"}})), UsageError);
  EXPECT_THROW(shard_from_environment(0, env_of({{"JOB_COMPLETION_INDEX", "3"}, {"QUANT_SHARDS", "3"}})), UsageError);
  EXPECT_FALSE(shard_from_environment(0, env_of({})));
}

RecipeJob job(const std::string& name, const std::string& model, const std::string& output) {
  RecipeJob j;
  j.name = name;
  j.method = "rtn";
  j.model = model;
  j.output = output;
  return j;
}

TEST(Shard, EveryJobInExactlyOneShardAndChainsTogether) {
  // c reads a's output, e reads c's: {a, c, e} is one group; b, d, f are groups of their own.
  const std::vector<RecipeJob> jobs = {job("a", "/m", "/o/a"), job("b", "/m", "/o/b"), job("c", "/o/a", "/o/c"),
                                       job("d", "/m", "/o/d"), job("e", "/o/c", "/o/e"), job("f", "/m", "/o/f")};
  const auto two = assign_shards(jobs, 2);
  EXPECT_EQ(two, (std::vector<std::size_t>{0, 1, 0, 0, 0, 1}));  // groups a, b, d, f dealt 0, 1, 0, 1
  for (std::size_t n = 1; n <= 7; ++n) {
    const auto of = assign_shards(jobs, n);
    EXPECT_EQ(of, assign_shards(jobs, n));
    for (std::size_t i = 0; i < jobs.size(); ++i) EXPECT_LT(of[i], n);
    EXPECT_EQ(of[0], of[2]);
    EXPECT_EQ(of[2], of[4]);
    std::set<std::size_t> used(of.begin(), of.end());
    EXPECT_EQ(used.size(), std::min<std::size_t>(n, 4)) << n;  // 4 groups fill min(n, 4) shards
  }
  EXPECT_THROW(assign_shards(jobs, 0), UsageError);
}

TEST(Shard, MergedReportPrefersTheRetriedSuccessAndNamesMissingJobs) {
  const std::vector<RecipeJob> jobs = {job("a", "/m", "/o/a"), job("b", "/m", "/o/b"), job("c", "/m", "/o/c")};
  const json first = json::array({{{"name", "a"}, {"method", "rtn"}, {"output", "/o/a"}, {"status", "failed"}, {"exit_code", 130}}});
  const json retry = json::array({{{"name", "a"}, {"method", "rtn"}, {"output", "/o/a"}, {"status", "ok"}, {"bpw", 4.5}},
                                  {{"name", "stranger"}, {"method", "rtn"}, {"output", "/o/x"}, {"status", "ok"}}});
  const json other = json::array({{{"name", "b"}, {"method", "rtn"}, {"output", "/o/b"}, {"status", "done"}}});
  bool failed = false;
  json m = merge_reports(jobs, {{"s0-retry.json", retry}, {"s0.json", first}, {"s1.json", other}}, failed);
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0]["status"], "ok");
  EXPECT_EQ(m[0]["report"], "s0-retry.json");
  EXPECT_EQ(m[1]["status"], "done");
  EXPECT_EQ(m[2]["status"], "missing");
  EXPECT_TRUE(failed);
  const std::string xml = report_junit(m, "r<1>.json");
  EXPECT_NE(xml.find("tests=\"3\" failures=\"1\""), std::string::npos) << xml;
  EXPECT_NE(xml.find("name=\"r&lt;1&gt;.json\""), std::string::npos);
  EXPECT_NE(xml.find("type=\"missing\""), std::string::npos);
  m = merge_reports({jobs[0], jobs[1]}, {{"s0.json", first}, {"s1.json", other}}, failed);
  EXPECT_EQ(m[0]["status"], "failed");
  EXPECT_TRUE(failed);
  m = merge_reports({jobs[1]}, {{"s1.json", other}}, failed);
  EXPECT_FALSE(failed);
}

ModelConfig shape(std::int64_t hidden, std::int64_t inter, std::int64_t layers, std::int64_t heads, std::int64_t kv, std::int64_t vocab) {
  ModelConfig c;
  c.hidden_size = hidden;
  c.intermediate_size = inter;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv;
  c.head_dim = hidden / heads;
  c.vocab_size = vocab;
  return c;
}

// The estimates reproduce the bench/ measurements they were fitted on within ±50 % (2 threads).
TEST(Estimate, ReproducesTheBenchFiguresWithinHalf) {
  const ModelConfig wiki = shape(256, 768, 6, 8, 4, 2048), big = shape(2048, 5632, 22, 32, 4, 32000);
  struct Case {
    const ModelConfig* c;
    std::int64_t params;
    const char* method;
    std::int64_t tokens, seqlen;
    double seconds, mb;
  };
  const Case cases[] = {{&wiki, 5'246'208, "gptq", 128 * 512, 512, 18.4, 693},  {&wiki, 5'246'208, "awq", 128 * 512, 512, 143.4, 1038},
                        {&wiki, 5'246'208, "kmeans", 128 * 512, 512, 41.5, 611}, {&big, 1'100'048'384, "gptq", 128 * 128, 128, 662, 2100},
                        {&big, 1'100'048'384, "awq", 16 * 128, 128, 814, 0},     {&big, 1'100'048'384, "gguf", 0, 0, 35, 425}};
  for (const Case& k : cases) {
    const JobEstimate e = estimate_job(*k.c, k.params, k.method, k.tokens, k.seqlen, 2);
    EXPECT_NEAR(e.seconds / k.seconds, 1.0, 0.5) << k.method << " " << e.seconds;
    if (k.mb > 0) {
      EXPECT_NEAR(static_cast<double>(e.peak_rss_bytes) / 1e6 / k.mb, 1.0, 0.5) << k.method;
    }
  }
  // More calibration costs more; twice the threads halve the time.
  const JobEstimate a = estimate_job(wiki, 5'246'208, "gptq", 1000, 100, 2), b = estimate_job(wiki, 5'246'208, "gptq", 2000, 100, 2);
  EXPECT_LT(a.seconds, b.seconds);
  EXPECT_LT(a.peak_rss_bytes, b.peak_rss_bytes);
  EXPECT_NEAR(estimate_job(wiki, 5'246'208, "gptq", 2000, 100, 4).seconds * 2, b.seconds, 1e-9);
  EXPECT_THROW(estimate_job(wiki, 1, "magic", 0, 0, 2), UsageError);
}

// A claim left by another host whose heartbeat is fresh: that host's run is alive on a
// filesystem that does not share locks, so the output is refused; a stale claim is taken over.
TEST(OutputLockClaim, RefusesAFreshClaimOfAnotherHostAndTakesOverStaleOnes) {
  TempDir dir;
  const fs::path out = dir / "out";
  const fs::path lock = dir / "out.lock";
  write_file_atomic(lock, "pid 4242 on host some-other-node (since unix time 1)\n");
  try {
    OutputLock l(out);
    FAIL() << "a fresh claim of another host was taken over";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("some-other-node"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("heartbeat"), std::string::npos) << e.what();
  }
  struct timespec old[2] = {{::time(nullptr) - kLockStaleSeconds - 5, 0}, {::time(nullptr) - kLockStaleSeconds - 5, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, lock.c_str(), old, 0), 0);
  {
    OutputLock l(out);  // stale: taken over, and the claim is ours now
    EXPECT_NE(read_text_file(lock).find(fmt::format("pid {} ", ::getpid())), std::string::npos);
  }
  EXPECT_FALSE(fs::exists(lock));  // released: removed
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  write_file_atomic(lock, fmt::format("pid 4242 on host {} (since unix time 1)\n", host));
  { OutputLock l(out); }  // this host's claim without its flock: the holder died
}

// --- the CLI ---

struct Recipe {
  TempDir dir;
  Recipe(int bits_of_c = 4) {
    testing::TinyModelSpec spec;
    spec.hidden = 64;
    spec.intermediate = 128;
    spec.heads = 4;
    spec.kv_heads = 4;
    testing::write_tiny_model(dir / "m", spec);
    testing::write_tiny_tokenizer(dir / "m", spec.vocab);  // for the GGUF job
    std::string ids;
    for (int i = 0; i < 200; ++i) ids += std::to_string((i * 37) % 96) + " ";
    write_file_atomic(dir / "ids.txt", ids);
    write(bits_of_c);
  }
  void write(int bits_of_c) const {
    const json recipe = {{"defaults", {{"model", "m"}}},
                         {"jobs",
                          {{{"name", "a"}, {"method", "rtn"}, {"output", "out/a"}, {"group_size", 32}},
                           {{"name", "b"}, {"method", "rtn"}, {"output", "out/b"}, {"bits", 8}, {"group_size", 32}, {"eval", {{"tokens", "ids.txt"}, {"ctx", 32}}}},
                           {{"name", "c"}, {"method", "rtn"}, {"output", "out/c"}, {"bits", bits_of_c}, {"group_size", 32}},
                           {{"name", "g"}, {"method", "gguf"}, {"output", "out/g.gguf"}, {"type", "q8_0"}}}}};
    write_file_atomic(dir / "r.json", recipe.dump());
  }
  std::string recipe() const { return (dir / "r.json").string(); }
};

struct ScopedEnv {
  std::vector<std::string> names;
  explicit ScopedEnv(const std::map<std::string, std::string>& vars) {
    for (const auto& [k, v] : vars) {
      ::setenv(k.c_str(), v.c_str(), 1);
      names.push_back(k);
    }
  }
  ~ScopedEnv() {
    for (const auto& k : names) ::unsetenv(k.c_str());
  }
};

TEST(CliRunShards, EachShardRunsItsJobsAndARetrySkipsFinishedOnes) {
  Recipe f;
  auto r = testing::run_quant("run " + f.recipe() + " --shard 1/2 --json --report " + (f.dir / "reports" / "s1.json").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  json rep = json::parse(r.out);
  ASSERT_EQ(rep.size(), 2u);
  EXPECT_EQ(rep[0]["name"], "b");
  EXPECT_EQ(rep[0]["shard"], 1);
  EXPECT_GT(rep[0]["ppl"].get<double>(), 1.0);  // its eval ran
  EXPECT_EQ(rep[1]["name"], "g");
  EXPECT_FALSE(fs::exists(f.dir / "out" / "a"));
  // Retried: the GGUF file is recognised by the job id it carries (quant.job_id), like directories.
  r = testing::run_quant("run " + f.recipe() + " --shard 1/2 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  rep = json::parse(r.out);
  EXPECT_EQ(rep[0]["status"], "done");
  EXPECT_EQ(rep[1]["status"], "done");
  EXPECT_GT(rep[1]["bytes"].get<double>(), 1000.0);
  {
    ScopedEnv env({{"SLURM_ARRAY_TASK_ID", "0"}, {"SLURM_ARRAY_TASK_MIN", "0"}, {"SLURM_ARRAY_TASK_COUNT", "2"}});
    r = testing::run_quant("run " + f.recipe() + " --json --report " + (f.dir / "reports" / "s0.json").string());
    ASSERT_EQ(r.rc, 0) << r.err;
    EXPECT_NE(r.err.find("shard 0/2 (SLURM_ARRAY_TASK_ID=0"), std::string::npos) << r.err;
    rep = json::parse(r.out);
    ASSERT_EQ(rep.size(), 2u);
    EXPECT_EQ(rep[0]["name"], "a");
    EXPECT_EQ(rep[1]["name"], "c");
    EXPECT_EQ(rep[1]["status"], "ok");
    const auto before = fs::last_write_time(f.dir / "out" / "c" / "model.safetensors");
    // The task retried: its finished jobs are recognised and not run again.
    r = testing::run_quant("run " + f.recipe() + " --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    rep = json::parse(r.out);
    EXPECT_EQ(rep[0]["status"], "done");
    EXPECT_EQ(rep[1]["status"], "done");
    EXPECT_GT(rep[1]["bpw"].get<double>(), 4.0);
    EXPECT_EQ(fs::last_write_time(f.dir / "out" / "c" / "model.safetensors"), before);
  }
  // Merged: all three; without shard 0's report, two are missing and the merge fails.
  r = testing::run_quant("run " + f.recipe() + " --report-merge " + (f.dir / "reports").string() + " --json --junit " +
                         (f.dir / "merged.xml").string());
  ASSERT_EQ(r.rc, 0) << r.err;
  rep = json::parse(r.out);
  ASSERT_EQ(rep.size(), 4u);
  for (const auto& e : rep) EXPECT_EQ(e["status"], "ok") << e.dump();
  EXPECT_NE(read_text_file(f.dir / "merged.xml").find("tests=\"4\" failures=\"0\""), std::string::npos);
  fs::remove(f.dir / "reports" / "s0.json");
  r = testing::run_quant("run " + f.recipe() + " --report-merge " + (f.dir / "reports").string() + " --json");
  EXPECT_EQ(r.rc, 6);
  rep = json::parse(r.out);
  EXPECT_EQ(rep[0]["status"], "missing");
  EXPECT_EQ(rep[1]["status"], "ok");
  EXPECT_EQ(rep[2]["status"], "missing");
  // A changed job is not "done": its old output is someone else's now, and the job refuses it.
  f.write(3);
  r = testing::run_quant("run " + f.recipe() + " --shard 0/2 --json -k");
  EXPECT_EQ(r.rc, 6);
  rep = json::parse(r.out);
  EXPECT_EQ(rep[0]["status"], "done");
  EXPECT_EQ(rep[1]["status"], "failed");
}

TEST(CliRunShards, ListsShardsAndRefusesInconsistentOnes) {
  Recipe f;
  auto r = testing::run_quant("run " + f.recipe() + " --list --shard 0/2 --json");
  ASSERT_EQ(r.rc, 0) << r.err;
  const json list = json::parse(r.out);
  ASSERT_EQ(list.size(), 4u);
  EXPECT_EQ(list[0]["shard"], 0);
  EXPECT_EQ(list[1]["shard"], 1);
  EXPECT_EQ(list[2]["shard"], 0);
  EXPECT_EQ(list[3]["shard"], 1);
  EXPECT_NE(list[0]["job_id"], list[1]["job_id"]);
  EXPECT_FALSE(fs::exists(f.dir / "out"));
  r = testing::run_quant("run " + f.recipe() + " --shard 2/2");
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("0 … 1"), std::string::npos) << r.err;
  {
    ScopedEnv env(std::map<std::string, std::string>{{"JOB_COMPLETION_INDEX", "1"}});
    r = testing::run_quant("run " + f.recipe() + " --list");
    EXPECT_EQ(r.rc, 2);
    EXPECT_NE(r.err.find("QUANT_SHARDS"), std::string::npos) << r.err;
    r = testing::run_quant("run " + f.recipe() + " --shards 3 --dry-run --json");
    ASSERT_EQ(r.rc, 0) << r.err;
    const json rep = json::parse(r.out);
    ASSERT_EQ(rep.size(), 1u);
    EXPECT_EQ(rep[0]["name"], "b");
    EXPECT_EQ(rep[0]["status"], "planned");
    EXPECT_GT(rep[0]["estimate"]["peak_rss_bytes"].get<double>(), 1e6);
    EXPECT_GT(rep[0]["estimate"]["seconds"].get<double>(), 0.0);
    // b has an eval: its memory is estimated too and the job's peak covers it.
    EXPECT_GT(rep[0]["estimate"]["eval_peak_rss_bytes"].get<double>(), 1e6);
    EXPECT_GE(rep[0]["estimate"]["peak_rss_bytes"].get<double>(), rep[0]["estimate"]["eval_peak_rss_bytes"].get<double>());
  }
  r = testing::run_quant("run " + f.recipe() + " --dry-run");
  ASSERT_EQ(r.rc, 0) << r.err;
  EXPECT_NE(r.out.find("Slurm request with a 1.5x margin: --mem="), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(f.dir / "out"));
}

}  // namespace
}  // namespace quant
