// Kernel benchmarks (Google Benchmark): the forward pass's linear, one decoder layer, RTN,
// packing and 1-D k-means per row. Run: build/bench/quant_bench [--benchmark_filter=...]. Thread count: OMP_NUM_THREADS.
#include <benchmark/benchmark.h>

#include <random>

#include "quant/core/dtype.h"
#include "quant/formats/formats.h"
#include "quant/model/forward.h"
#include "quant/methods/kmeans.h"
#include "quant/core/quantizer.h"

namespace {

using namespace quant;

Mat random_matrix(Eigen::Index r, Eigen::Index c, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0.0f, 0.05f);
  Mat m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = n(rng);
  return m;
}

// y = x Wᵀ for tokens × in → out; args: tokens, in, out.
void BM_LinearForward(benchmark::State& st) {
  const Mat x = random_matrix(st.range(0), st.range(1), 1), w = random_matrix(st.range(2), st.range(1), 2);
  Mat y;
  for (auto _ : st) {
    linear_forward(x, w, Vec(), y);
    benchmark::DoNotOptimize(y.data());
  }
  st.counters["GFLOP/s"] = benchmark::Counter(2.0 * st.range(0) * st.range(1) * st.range(2), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
BENCHMARK(BM_LinearForward)->Args({1024, 256, 768})->Args({256, 2048, 5632})->Unit(benchmark::kMillisecond)->UseRealTime();

// One decoder layer of wiki-llama-5m's shape over a 1024-token window.
void BM_DecoderLayer(benchmark::State& st) {
  ModelConfig c;
  c.hidden_size = 256;
  c.intermediate_size = 768;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.head_dim = 32;
  c.rms_norm_eps = 1e-5;
  LayerWeights L;
  const std::int64_t q = 256, kv = 128;
  L.linear(LinearKind::q) = random_matrix(q, 256, 1);
  L.linear(LinearKind::k) = random_matrix(kv, 256, 2);
  L.linear(LinearKind::v) = random_matrix(kv, 256, 3);
  L.linear(LinearKind::o) = random_matrix(256, q, 4);
  L.linear(LinearKind::gate) = random_matrix(768, 256, 5);
  L.linear(LinearKind::up) = random_matrix(768, 256, 6);
  L.linear(LinearKind::down) = random_matrix(256, 768, 7);
  L.attn_norm = Vec::Ones(256);
  L.mlp_norm = Vec::Ones(256);
  const RopeTable rope = build_rope(c, st.range(0));
  const Mat h0 = random_matrix(st.range(0), 256, 8);
  for (auto _ : st) {
    Mat h = h0;
    decoder_layer_forward(c, L, rope, h);
    benchmark::DoNotOptimize(h.data());
  }
  st.counters["tokens/s"] = benchmark::Counter(static_cast<double>(st.range(0)), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_DecoderLayer)->Arg(256)->Arg(1024)->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_QuantizeRtn(benchmark::State& st) {
  const Mat w = random_matrix(st.range(0), st.range(1), 3);
  QuantSpec s;
  s.bits = static_cast<int>(st.range(2));
  for (auto _ : st) benchmark::DoNotOptimize(quantize_rtn(w, s).q.data());
  st.counters["weights/s"] = benchmark::Counter(static_cast<double>(w.size()), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_QuantizeRtn)->Args({2048, 2048, 4})->Args({2048, 2048, 3})->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_PackGptq(benchmark::State& st) {
  QuantSpec s;
  s.bits = static_cast<int>(st.range(0));
  const auto m = quantize_rtn(random_matrix(2048, 2048, 4), s);
  for (auto _ : st) benchmark::DoNotOptimize(formats::pack_gptq(m).qweight.data());
  st.counters["weights/s"] = benchmark::Counter(2048.0 * 2048, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PackGptq)->Arg(4)->Arg(3)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

// Clustering one row (fp16-rounded normal weights, random positive importances) into 2^bits
// centroids; args: width, bits, solver (0 exact, 1 lloyd).
void BM_KmeansRow(benchmark::State& st) {
  const auto n = static_cast<std::int64_t>(st.range(0));
  const int k = 1 << st.range(1);
  Mat x = random_matrix(1, n, 5);
  for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = f16_to_f32(f32_to_f16(x.data()[i]));
  std::mt19937 rng(6);
  std::exponential_distribution<float> e(1.0f);
  std::vector<float> w(static_cast<std::size_t>(n));
  for (auto& v : w) v = e(rng);
  for (auto _ : st) {
    const Kmeans1d r = st.range(2) == 0 ? kmeans_1d_exact(x.data(), w.data(), n, k) : kmeans_1d_lloyd(x.data(), w.data(), n, k);
    benchmark::DoNotOptimize(r.objective);
  }
}
BENCHMARK(BM_KmeansRow)->ArgsProduct({{256, 4096, 11008}, {3, 4}, {0, 1}})->Unit(benchmark::kMicrosecond)->UseRealTime();

BENCHMARK_MAIN();
