// CUDA throughput at the seed's Experiment 1 size (16 x 256 tokens, d = 512, vocab 49152):
// each block's forward and backward, the attention kernels alone (fp32 and tensor-core sets
// side by side), one full training step of each of the five Experiment 1 models, and raw bf16
// cuBLASLt GEMMs.  Times come from CUDA events around each iteration.
//
// Model FLOP utilisation (MFU) is model FLOP/s over the bf16 GEMM rate this program measures at
// start-up (8192^3, median of 11), so the ratio is taken side by side on the same GPU.
// Run: bench_cuda --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include <ablate/backend/cuda/backend.cuh>

#include "block_bench.hpp"

namespace {

using namespace ablate;
using namespace ablate::bench;
using cuda::Runtime;

double g_peak_flops = 0;  // measured bf16 GEMM FLOP/s

// Times `reps` calls of fn() with CUDA events on the runtime stream; returns seconds per call.
// Calls of a few microseconds (a norm over 4096 x 512) need reps > 1: each timing starts on an
// idle GPU, so it would otherwise include the host's launch of the first kernel.
// A timing event, destroyed however the timed call ends (a failing benchmark throws).
struct TimingEvent {
  cudaEvent_t event = nullptr;
  TimingEvent() { ABLATE_CUDA_CHECK(cudaEventCreate(&event)); }
  ~TimingEvent() { (void)cudaEventDestroy(event); }
  TimingEvent(const TimingEvent&) = delete;
  TimingEvent& operator=(const TimingEvent&) = delete;
};

template <class Fn>
double timed(Fn&& fn, int reps = 1) {
  const TimingEvent start, stop;
  ABLATE_CUDA_CHECK(cudaEventRecord(start.event, cuda::stream()));
  for (int r = 0; r < reps; ++r) fn();
  ABLATE_CUDA_CHECK(cudaEventRecord(stop.event, cuda::stream()));
  ABLATE_CUDA_CHECK(cudaEventSynchronize(stop.event));
  float ms = 0;
  ABLATE_CUDA_CHECK(cudaEventElapsedTime(&ms, start.event, stop.event));
  return ms / 1e3 / reps;
}

constexpr int kBlockReps = 10;  // calls per timing of a block's pass

// Runs a benchmark's body; an exception (a CUDA or cuBLASLt error, a rejected shape) marks that
// benchmark failed in the report instead of ending the program, so the others still run.
template <class Body>
void guarded(benchmark::State& state, Body&& body) {
  try {
    body();
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void set_cuda_rates(benchmark::State& state, double flops_per_iteration) {
  set_rates(state, flops_per_iteration);
  if (g_peak_flops > 0)
    state.counters["MFU"] = benchmark::Counter(flops_per_iteration / g_peak_flops,
                                               benchmark::Counter::kIsIterationInvariantRate);
}

// bf16 x bf16 -> fp32 GEMM C[M, N] = A[M, K] B[N, K]^T on operands already in bf16.
struct Bf16Gemm {
  std::ptrdiff_t m, n, k;
  cuda::DeviceBuffer<__nv_bfloat16> a, b;
  cuda::DeviceBuffer<float> c;
  Bf16Gemm(std::ptrdiff_t m_, std::ptrdiff_t n_, std::ptrdiff_t k_)
      : m(m_), n(n_), k(k_), a(static_cast<std::size_t>(m * k)), b(static_cast<std::size_t>(n * k)),
        c(static_cast<std::size_t>(m * n)) {
    CUDA::Tensor fill(1, std::max(m, n) * k);
    CUDA::fill_normal(fill, 1, 1.0);
    cuda::Gemm::convert(a.data(), fill.data(), static_cast<std::size_t>(m * k));
    cuda::Gemm::convert(b.data(), fill.data(), static_cast<std::size_t>(n * k));
  }
  void run() { cuda::Gemm::get().run_bf16(c.data(), a.data(), false, b.data(), true, m, n, k, 1.f, 0.f, nullptr); }
  double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k); }
};

// The median of 11 products after about 0.15 s of untimed ones, so the clocks have left idle.
double measure_peak_gemm() {
  Bf16Gemm g(8192, 8192, 8192);
  for (int i = 0; i < 100; ++i) g.run();
  std::vector<double> times;
  for (int i = 0; i < 11; ++i) times.push_back(timed([&] { g.run(); }));
  std::sort(times.begin(), times.end());
  return g.flops() / times[5];
}

// Arguments {M, K, N}: C[M, N] = A[M, K] B[N, K]^T.
void BM_Bf16Gemm(benchmark::State& state) {
  guarded(state, [&] {
    Bf16Gemm g(state.range(0), state.range(2), state.range(1));
    g.run();  // warm-up and heuristic query
    for (auto _ : state) state.SetIterationTime(timed([&] { g.run(); }));
    state.counters["FLOP/s"] = benchmark::Counter(
        g.flops(), benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  });
}
BENCHMARK(BM_Bf16Gemm)
    ->Args({4096, 512, 2048})
    ->Args({4096, 512, 49152})
    ->Args({8192, 8192, 8192})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

template <class Policy>
void block_forward(benchmark::State& state, double extra_flops_per_token) {
  guarded(state, [&] {
    BlockBench<Policy, CUDA> b(block_config<Policy>());
    b.forward();  // warm-up: allocations, GEMM plans
    for (auto _ : state) state.SetIterationTime(timed([&] { b.forward(); }, kBlockReps));
    set_cuda_rates(state, (b.matrix_flops_per_token() + extra_flops_per_token) * kTokens);
  });
}

template <class Policy>
void block_backward(benchmark::State& state, double extra_flops_per_token) {
  guarded(state, [&] {
    BlockBench<Policy, CUDA> b(block_config<Policy>());
    b.forward();
    b.dy = random_activations<CUDA>(b.y.cols(), 4);
    b.backward();  // warm-up
    for (auto _ : state) state.SetIterationTime(timed([&] { b.backward(); }, kBlockReps));
    set_cuda_rates(state, 2.0 * (b.matrix_flops_per_token() + extra_flops_per_token) * kTokens);
  });
}

#define ABLATE_BLOCK_BENCH(Name, Policy, extra)                                              \
  void BM_##Name##_forward(benchmark::State& s) { block_forward<Policy>(s, extra); }   \
  void BM_##Name##_backward(benchmark::State& s) { block_backward<Policy>(s, extra); } \
  BENCHMARK(BM_##Name##_forward)->UseManualTime()->Unit(benchmark::kMillisecond);      \
  BENCHMARK(BM_##Name##_backward)->UseManualTime()->Unit(benchmark::kMillisecond);

ABLATE_BLOCK_BENCH(RMSNorm, RMS, 0)
ABLATE_BLOCK_BENCH(LayerNorm, LN, 0)
ABLATE_BLOCK_BENCH(MHA, MHA, mha_attention_flops())
ABLATE_BLOCK_BENCH(MLA, MLA, mla_attention_flops())
ABLATE_BLOCK_BENCH(MLP, MLP, 0)
ABLATE_BLOCK_BENCH(GatedMLP, GatedMLP, 0)
ABLATE_BLOCK_BENCH(MoE8x2, RoutedMoE, 0)
using SeedMoE8x2 = SeedMoE<8, 2>;
ABLATE_BLOCK_BENCH(SeedMoE8x2, SeedMoE8x2, 0)

// Scaled dot-product attention alone at Experiment 1 size (batch 16, seq 256, 8 causal heads of
// 64) with the given kernel set and dropout rate.  FLOPs as for the blocks: the full T x T
// products (causal masking ignored, so the kernels do about half of them), the backward twice
// the forward.
void attention_pass(benchmark::State& state, cuda::AttentionKernel kernel, double dropout,
                    bool backward) {
  const ModelConfig cfg = experiment1_config();
  AttentionShape a;
  a.batch = static_cast<std::ptrdiff_t>(kBatch);
  a.seq = static_cast<std::ptrdiff_t>(kSeq);
  a.heads = static_cast<std::ptrdiff_t>(cfg.num_attention_heads);
  a.qk_dim = a.v_dim = static_cast<std::ptrdiff_t>(cfg.head_dim());
  a.scale = 1.0 / std::sqrt(static_cast<double>(cfg.head_dim()));
  a.causal = true;
  const auto width = static_cast<std::ptrdiff_t>(cfg.hidden_size);
  const CUDA::Tensor q = random_activations<CUDA>(width, 11);
  const CUDA::Tensor k = random_activations<CUDA>(width, 12);
  const CUDA::Tensor v = random_activations<CUDA>(width, 13);
  const CUDA::Tensor dout = random_activations<CUDA>(width, 14);
  CUDA::Tensor out, probs, dq, dk, dv;
  cuda::set_attention_kernel(kernel);  // the caller restores the previous choice
  const auto forward = [&] { CUDA::attention_forward(out, probs, q, k, v, a, dropout, 5); };
  const auto backward_pass = [&] {
    CUDA::attention_backward(dq, dk, dv, dout, probs, q, k, v, a, dropout, 5);
  };
  forward();  // warm-up: allocations, the shared-memory opt-in
  backward_pass();
  for (auto _ : state) state.SetIterationTime(backward ? timed(backward_pass) : timed(forward));
  const double flops = attention_flops_per_token(kSeq, cfg.num_attention_heads, cfg.head_dim(),
                                                 cfg.head_dim(), 1) *
                       static_cast<double>(kTokens);
  set_cuda_rates(state, backward ? 2.0 * flops : flops);
}

// Both kernel sets side by side, forward and backward, without and with dropout.
void register_attention_benches() {
  using cuda::AttentionKernel;
  const double training_dropout = experiment1_config().attention_dropout;
  for (const bool backward : {false, true})
    for (const double dropout : {0.0, training_dropout})
      for (const auto& [choice, name] : {std::pair{AttentionKernel::fp32, "fp32"},
                                         std::pair{AttentionKernel::tensor_core, "tensor_core"}}) {
        const AttentionKernel kernel = choice;
        const std::string label = std::string("BM_Attention_") +
                                  (backward ? "backward/" : "forward/") + name +
                                  (dropout > 0.0 ? "_dropout" : "");
        benchmark::RegisterBenchmark(label.c_str(), [=](benchmark::State& s) {
          const cuda::AttentionKernel previous = cuda::attention_kernel();
          guarded(s, [&] { attention_pass(s, kernel, dropout, backward); });
          cuda::set_attention_kernel(previous);
        })->UseManualTime()->Unit(benchmark::kMillisecond);
      }
}

// One optimizer step of an Experiment 1 model: forward, backward, clipping, Muon + AdamW.
template <class Arch>
void train_step(benchmark::State& state, const ModelConfig& cfg, double routed_fraction,
                double attention_flops) {
  guarded(state, [&] {
    TrainStepBench<Arch, CUDA> b(cfg);
    b.step();  // warm-up: allocations, GEMM plans, optimizer state
    b.step();
    for (auto _ : state)
      state.SetIterationTime(timed([&] { benchmark::DoNotOptimize(b.step()); }));
    set_cuda_rates(state, b.flops(routed_fraction, attention_flops));
  });
}

// The step's two phases apart (BM_TrainPhase/<model>/forward_backward, .../update), to show
// where a step's time goes: the model's passes, or clipping and the optimizers.
template <class Arch>
void train_phase(benchmark::State& state, const ModelConfig& cfg, bool update) {
  guarded(state, [&] {
    TrainStepBench<Arch, CUDA> b(cfg);
    b.step();  // warm-up, as train_step
    b.step();
    for (auto _ : state)
      state.SetIterationTime(update ? timed([&] { b.update(); })
                                    : timed([&] { benchmark::DoNotOptimize(b.forward_backward()); }));
  });
}

template <class Arch>
void register_train_step(const char* model, const ModelConfig& cfg, double routed_fraction,
                         double attention_flops) {
  benchmark::RegisterBenchmark((std::string("BM_TrainStep/") + model).c_str(),
                               [=](benchmark::State& s) { train_step<Arch>(s, cfg, routed_fraction, attention_flops); })
      ->UseManualTime()
      ->Unit(benchmark::kMillisecond);
  for (const bool update : {false, true})
    benchmark::RegisterBenchmark(
        (std::string("BM_TrainPhase/") + model + (update ? "/update" : "/forward_backward")).c_str(),
        [=](benchmark::State& s) { train_phase<Arch>(s, cfg, update); })
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
}

void register_train_steps() {
  const std::size_t layers = experiment1_config().num_hidden_layers;
  const double mha = mha_attention_flops(layers), mla = mla_attention_flops(layers);
  const ModelConfig dense = experiment1_config(), latent = experiment1_mla_config();
  register_train_step<Architecture<Attention<MHA>, FFN<SeedMoE<8, 2>>, Norm<RMS>>>("baseline", dense, 0.25, mha);
  register_train_step<Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>>("mlp_512d", dense, 1.0, mha);
  register_train_step<Architecture<Attention<MLA>, FFN<GatedMLP>, Norm<RMS>>>("attention_mlp_512d", latent, 1.0, mla);
  register_train_step<Architecture<Attention<MHA>, FFN<Glm4MoE<8, 2>>, Norm<RMS>>>("moe_8e_2k_512d", dense, 0.25, mha);
  register_train_step<Architecture<Attention<MLA>, FFN<Glm4MoE<8, 2>>, Norm<RMS>>>("attention_moe_8e_2k_512d", latent, 0.25, mla);
}

}  // namespace

int main(int argc, char** argv) {
  if (cuda::device_count() == 0) {
    std::fprintf(stderr, "bench_cuda: no CUDA device\n");
    return 1;
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  g_peak_flops = measure_peak_gemm();
  const auto& props = Runtime::get().properties();
  benchmark::AddCustomContext("gpu", props.name);
  benchmark::AddCustomContext("bf16_gemm_8192_tflops", std::to_string(g_peak_flops / 1e12));
  register_attention_benches();
  register_train_steps();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
