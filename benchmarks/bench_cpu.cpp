// CPU throughput: each block's forward and backward at the seed's Experiment 1 size
// (16 x 256 tokens, d = 512), the fused cross-entropy at the quick preset's and the seed's
// logits, one full training step of the seed's mlp_512d architecture (vocab 49152), and an
// Eigen sgemm of the shapes that dominate that step, so the ratio train-step GFLOP/s / sgemm
// GFLOP/s can be read off one run.
//
// Wall-clock rates (the kernels run on all cores).
// Run: bench_cpu --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include <ablate/backend/cpu/memory.hpp>
#include <ablate/io/io.hpp>
#include <ablate/train/trainer.hpp>

#include "block_bench.hpp"

namespace {

using namespace ablate;
using namespace ablate::bench;
using Mat = CPU::Tensor;

template <class Policy>
void block_forward(benchmark::State& state, double extra_flops_per_token) {
  BlockBench<Policy, CPU> b(block_config<Policy>());
  b.forward();  // warm-up: first-touch allocation stays out of the timing
  for (auto _ : state) {
    b.forward();
    benchmark::DoNotOptimize(b.y.data());
  }
  set_rates(state, (b.matrix_flops_per_token() + extra_flops_per_token) * kTokens);
}

template <class Policy>
void block_backward(benchmark::State& state, double extra_flops_per_token) {
  BlockBench<Policy, CPU> b(block_config<Policy>());
  b.forward();
  b.dy = random_activations<CPU>(b.y.cols(), 4);
  b.backward();  // warm-up
  for (auto _ : state) {
    b.backward();
    benchmark::DoNotOptimize(b.dx.data());
  }
  set_rates(state, 2.0 * (b.matrix_flops_per_token() + extra_flops_per_token) * kTokens);
}


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

// RoutedMoE against a dense GatedMLP of the same active width: routed dispatch should cost
// about the dense step, not E/K times more.
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
  using Arch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  TrainStepBench<Arch, CPU> b;
  b.step();  // warm-up: allocations and optimizer state
  for (auto _ : state) benchmark::DoNotOptimize(b.step());
  set_rates(state, b.flops(1.0, mha_attention_flops(b.cfg.num_hidden_layers)));
}
BENCHMARK(BM_TrainStep_mlp_512d)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(2);

// Weights and checkpoints of mlp_512d at the seed's size (38M float parameters: 144 MiB; a
// checkpoint 2.7 times that with the gradients and optimizer state), in bytes/s of the file,
// in the system's temporary folder (TMPDIR):
//   SaveWeights / SaveCheckpoint  the atomic write, fsync included (so disk-bound);
//   ReadTensors                   every tensor of the weights file read into host buffers,
//                                 the floor of a load;
//   LoadWeights / LoadCheckpoint  the whole load: validation, the finiteness pass, the copy.
// LoadWeights / ReadTensors is the price of the checks.
template <class Arch>
struct WeightsBench {
  TrainStepBench<Arch, CPU> b;
  Trainer<Model<Arch, CPU>> trainer{b.model, TrainConfig{}};
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("ablate-bench-io-" + std::to_string(::getpid()));
  std::filesystem::path weights = dir / "w.safetensors", checkpoint = dir / "c.safetensors";
  std::vector<std::vector<float>> buffers;  // ReadTensors' destination
  WeightsBench() {
    io::save_weights(b.model, weights);
    io::save_checkpoint(checkpoint, b.model, trainer);
  }
  ~WeightsBench() {
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
  }
};
using WeightsBenchArch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;

// Times `op(bench)`, which returns the file it wrote or read, and reports that file's bytes/s.
template <class Op>
void file_benchmark(benchmark::State& state, Op op) {
  WeightsBench<WeightsBenchArch> w;
  std::filesystem::path file;
  for (auto _ : state) file = op(w);
  state.counters["bytes/s"] = benchmark::Counter(static_cast<double>(std::filesystem::file_size(file)),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1024);
}

void BM_SaveWeights_mlp_512d(benchmark::State& state) {
  file_benchmark(state, [](auto& w) { io::save_weights(w.b.model, w.weights); return w.weights; });
}
void BM_ReadTensors_mlp_512d(benchmark::State& state) {
  file_benchmark(state, [](auto& w) {
    const auto reader = io::SafetensorsReader::open(w.weights);
    w.buffers.resize(reader.tensors().size());
    for (std::size_t i = 0; i < w.buffers.size(); ++i) {
      w.buffers[i].resize(reader.tensors()[i].numel());
      reader.read(reader.tensors()[i], std::span<float>(w.buffers[i]));
    }
    benchmark::DoNotOptimize(w.buffers.back().data());
    return w.weights;
  });
}
void BM_LoadWeights_mlp_512d(benchmark::State& state) {
  file_benchmark(state, [](auto& w) { io::load_weights(w.b.model, w.weights); return w.weights; });
}
void BM_SaveCheckpoint_mlp_512d(benchmark::State& state) {
  file_benchmark(state, [](auto& w) {
    io::save_checkpoint(w.checkpoint, w.b.model, w.trainer);
    return w.checkpoint;
  });
}
void BM_LoadCheckpoint_mlp_512d(benchmark::State& state) {
  file_benchmark(state, [](auto& w) {
    io::load_checkpoint(w.checkpoint, w.b.model, w.trainer);
    return w.checkpoint;
  });
}
BENCHMARK(BM_SaveWeights_mlp_512d)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_ReadTensors_mlp_512d)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LoadWeights_mlp_512d)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SaveCheckpoint_mlp_512d)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LoadCheckpoint_mlp_512d)->Unit(benchmark::kMillisecond)->UseRealTime();

// The fused softmax cross-entropy with its gradient over rows x vocab logits: the quick
// preset's batch (8 x 64 tokens, compact vocabulary 4096) and the seed's (16 x 256, GPT-2).
void BM_CrossEntropy(benchmark::State& state) {
  const auto rows = state.range(0), vocab = state.range(1);
  Mat logits(rows, vocab), dlogits;
  CPU::fill_normal(logits, 3, 2.0);
  std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
  for (std::size_t i = 0; i < targets.size(); ++i) targets[i] = static_cast<std::int32_t>((i * 7919) % vocab);
  auto step = [&] { return CPU::cross_entropy(logits, targets.data(), &dlogits, 1.0 / rows).loss_sum; };
  step();  // warm-up
  for (auto _ : state) benchmark::DoNotOptimize(step());
  state.counters["logits/s"] = benchmark::Counter(static_cast<double>(rows * vocab),
                                                  benchmark::Counter::kIsIterationInvariantRate,
                                                  benchmark::Counter::kIs1000);
}
BENCHMARK(BM_CrossEntropy)->Args({512, 4096})->Args({4096, 50257})->Unit(benchmark::kMillisecond)->UseRealTime();

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
