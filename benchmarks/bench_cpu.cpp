// CPU throughput: each block's forward and backward at the seed's Experiment 1 size
// (16 x 256 tokens, d = 512), one full training step of the seed's mlp_512d architecture
// (vocab 49152), and an Eigen sgemm of the shapes that dominate that step, so the ratio
// train-step GFLOP/s / sgemm GFLOP/s can be read off one run.
//
// Wall-clock rates (the kernels run on all cores).
// Run: bench_cpu --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <ablate/ablate.hpp>
#include <ablate/backend/cpu/memory.hpp>
#include <ablate/train/hybrid_optimizer.hpp>
#include <ablate/train/schedule.hpp>
#include <ablate/train/clip.hpp>

#include "flops.hpp"

namespace {

using namespace ablate;
using Mat = CPU::Tensor;

constexpr std::size_t kBatch = 16, kSeq = 256, kTokens = kBatch * kSeq;

ModelConfig experiment1_config() {
  ModelConfig cfg;  // defaults: d 512, 8 heads, 3 layers, d_ff 2048, seq 256, MLA sizes of Exp. 1
  cfg.vocab_size = 49152;
  return cfg;
}

void set_rates(benchmark::State& state, double flops_per_iteration) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kTokens),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops_per_iteration,
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

Mat random_activations(Eigen::Index cols, std::uint64_t key) {
  Mat x(static_cast<Eigen::Index>(kTokens), cols);
  CPU::fill_normal(x, key, 1.0);
  return x;
}

// One block with its parameters and activations at the benchmark size.
template <class Block>
struct BlockBench {
  ParameterStore<CPU> store;
  Initializer init{1, 0.02, InitScheme::Normal};
  RandomStream rng{7};
  PassContext ctx{true, kBatch, kSeq, &rng, 1.0};
  Block block;
  Mat x, y, dx, dy;

  template <class Make>
  explicit BlockBench(Make make) : block(make(store, init)) {
    x = random_activations(512, 3);
  }
  void forward() {
    if constexpr (requires { block.forward(y, x, ctx); }) block.forward(y, x, ctx);
    else block.forward(y, x);
  }
  double matrix_flops_per_token() const {
    if constexpr (requires { Block::experts_count; }) {
      return bench::matrix_flops_per_token(store, static_cast<double>(Block::top_k) /
                                                      static_cast<double>(Block::experts_count));
    } else {
      return bench::matrix_flops_per_token(store);
    }
  }
};

template <class Policy>
void block_forward(benchmark::State& state, double extra_flops_per_token) {
  const auto cfg = experiment1_config();
  BlockBench<typename Policy::template Block<CPU>> b(
      [&](ParameterStore<CPU>& s, Initializer& i) { return Policy::template make<CPU>(s, i, "block", cfg); });
  b.forward();  // warm-up: first-touch allocation stays out of the timing
  for (auto _ : state) {
    b.forward();
    benchmark::DoNotOptimize(b.y.data());
  }
  set_rates(state, (b.matrix_flops_per_token() + extra_flops_per_token) * kTokens);
}

template <class Policy>
void block_backward(benchmark::State& state, double extra_flops_per_token) {
  const auto cfg = experiment1_config();
  BlockBench<typename Policy::template Block<CPU>> b(
      [&](ParameterStore<CPU>& s, Initializer& i) { return Policy::template make<CPU>(s, i, "block", cfg); });
  b.forward();
  b.dy = random_activations(b.y.cols(), 4);
  b.block.backward(b.dx, b.dy);  // warm-up
  for (auto _ : state) {
    b.block.backward(b.dx, b.dy);
    benchmark::DoNotOptimize(b.dx.data());
  }
  set_rates(state, 2.0 * (b.matrix_flops_per_token() + extra_flops_per_token) * kTokens);
}

double mha_attention_flops() { return bench::attention_flops_per_token(kSeq, 8, 64, 64, 1); }
double mla_attention_flops() { return bench::attention_flops_per_token(kSeq, 8, 64, 64, 1); }

void BM_RMSNorm_forward(benchmark::State& s) { block_forward<RMS>(s, 0); }
void BM_RMSNorm_backward(benchmark::State& s) { block_backward<RMS>(s, 0); }
void BM_LayerNorm_forward(benchmark::State& s) { block_forward<LN>(s, 0); }
void BM_LayerNorm_backward(benchmark::State& s) { block_backward<LN>(s, 0); }
void BM_MHA_forward(benchmark::State& s) { block_forward<MHA>(s, mha_attention_flops()); }
void BM_MHA_backward(benchmark::State& s) { block_backward<MHA>(s, mha_attention_flops()); }
void BM_MLA_forward(benchmark::State& s) { block_forward<MLA>(s, mla_attention_flops()); }
void BM_MLA_backward(benchmark::State& s) { block_backward<MLA>(s, mla_attention_flops()); }
void BM_MLP_forward(benchmark::State& s) { block_forward<MLP>(s, 0); }
void BM_MLP_backward(benchmark::State& s) { block_backward<MLP>(s, 0); }
void BM_GatedMLP_forward(benchmark::State& s) { block_forward<GatedMLP>(s, 0); }
void BM_GatedMLP_backward(benchmark::State& s) { block_backward<GatedMLP>(s, 0); }

// MoE at E = 8, K = 2 (expert width 1024, active width 2048) against a dense GatedMLP of the
// same active width: routed dispatch should cost about the dense step, not E/K times more.
using RoutedMoE = MoE<8, 2, Glm4Router, GatedMLP, NoSharedExperts>;
void BM_MoE8x2_forward(benchmark::State& s) { block_forward<RoutedMoE>(s, 0); }
void BM_MoE8x2_backward(benchmark::State& s) { block_backward<RoutedMoE>(s, 0); }
void BM_SeedMoE8x2_forward(benchmark::State& s) { block_forward<SeedMoE<8, 2>>(s, 0); }
void BM_SeedMoE8x2_backward(benchmark::State& s) { block_backward<SeedMoE<8, 2>>(s, 0); }

BENCHMARK(BM_RMSNorm_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_RMSNorm_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LayerNorm_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LayerNorm_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MHA_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MHA_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MLA_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MLA_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MLP_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MLP_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_GatedMLP_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_GatedMLP_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MoE8x2_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MoE8x2_backward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SeedMoE8x2_forward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SeedMoE8x2_backward)->Unit(benchmark::kMillisecond)->UseRealTime();

// Embedding, tied LM head and cross-entropy over the 49152-token vocabulary.
void BM_EmbeddingHeadLoss(benchmark::State& state) {
  const auto cfg = experiment1_config();
  ParameterStore<CPU> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  TiedEmbedding<CPU> embedding(store, init, cfg.vocab_size, cfg.hidden_size);
  Tokens tokens(kBatch, kSeq);
  for (std::size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int>((i * 7919) % cfg.vocab_size);
  Mat x, logits, dlogits, dh;
  auto step = [&] {
    embedding.forward(x, tokens);
    embedding.head_forward(logits, x);
    const auto sums = CPU::cross_entropy(logits, tokens.data(), &dlogits, 1.0 / kTokens);
    benchmark::DoNotOptimize(sums.loss_sum);
    embedding.head_backward(dh, dlogits);
    embedding.backward(dh);
  };
  step();  // warm-up
  for (auto _ : state) step();
  set_rates(state, 3.0 * 2.0 * static_cast<double>(cfg.vocab_size * cfg.hidden_size) * kTokens);
}
BENCHMARK(BM_EmbeddingHeadLoss)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(3);

// One optimizer step of the seed recipe on the mlp_512d architecture: forward, backward,
// gradient clipping and the Muon + AdamW update.
void BM_TrainStep_mlp_512d(benchmark::State& state) {
  const auto cfg = experiment1_config();
  using Arch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  Model<Arch, CPU> model(cfg, 42);
  model.train(true);
  HybridOptimizer<CPU> optimizer(model.parameters());
  Tokens inputs(kBatch, kSeq), targets(kBatch, kSeq);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = static_cast<int>((i * 7919) % cfg.vocab_size);
    targets[i] = static_cast<int>((i * 104729 + 1) % cfg.vocab_size);
  }
  auto step = [&] {
    model.zero_grad();
    const auto stats = model.forward_backward(inputs, targets);
    benchmark::DoNotOptimize(stats.loss);
    clip_grad_norm(model.parameters(), 1.0);
    optimizer.step(1.0);
  };
  step();  // warm-up: allocations and optimizer state
  for (auto _ : state) step();
  const double per_token = 3.0 * (bench::projection_flops_per_token(model.parameters(), cfg) +
                                  bench::attention_flops_per_token(kSeq, 8, 64, 64, cfg.num_hidden_layers));
  set_rates(state, per_token * kTokens);
}
BENCHMARK(BM_TrainStep_mlp_512d)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

// Eigen sgemm C[M, N] = A[M, K] B[N, K]^T, the shape of a Linear forward.
void BM_EigenSgemm(benchmark::State& state) {
  const auto m = state.range(0), k = state.range(1), n = state.range(2);
  Mat a(m, k), b(n, k), c(m, n);
  CPU::fill_normal(a, 1, 1.0);
  CPU::fill_normal(b, 2, 1.0);
  c.noalias() = a * b.transpose();  // warm-up
  for (auto _ : state) {
    c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k),
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}
BENCHMARK(BM_EigenSgemm)->Args({4096, 512, 2048})->Args({4096, 512, 49152})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

int main(int argc, char** argv) {
  ablate::cpu::retain_freed_memory();  // see backend/cpu/memory.hpp
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
