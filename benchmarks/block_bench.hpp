// What the CPU and CUDA benchmark programs share: the seed's Experiment 1 size (16 x 256
// tokens, d = 512, vocab 49152), a block with its parameters and activations at that size, one
// training step of a whole model (forward, backward, clipping, Muon + AdamW), and the rate
// counters.  Each program times these its own way (wall clock on the CPU, CUDA events on the GPU).
#pragma once

#include <type_traits>

#include <benchmark/benchmark.h>

#include <cstdint>

#include <ablate/ablate.hpp>
#include <ablate/train/clip.hpp>
#include <ablate/train/hybrid_optimizer.hpp>

#include "flops.hpp"

namespace ablate::bench {

constexpr std::size_t kBatch = 16, kSeq = 256, kTokens = kBatch * kSeq;

inline ModelConfig experiment1_config() {
  ModelConfig cfg;  // defaults: d 512, 8 heads, 3 layers, d_ff 2048, seq 256, MLA sizes of Exp. 1
  cfg.vocab_size = 49152;
  return cfg;
}

// Experiment 1's MLA models put biases on the attention projections (SEED-NOTES).
inline ModelConfig experiment1_mla_config() {
  ModelConfig cfg = experiment1_config();
  cfg.attention_bias = true;
  return cfg;
}

// The config a block benchmark builds `Policy` with: Experiment 1's MLA (with its biases) for
// MLA, the skeleton's for every other block.
template <class Policy>
ModelConfig block_config() {
  return std::is_same_v<Policy, MLA> ? experiment1_mla_config() : experiment1_config();
}

// MoE at E = 8, K = 2 (expert width 1024, active width 2048) with the GLM4 router and no shared
// expert, to set beside a dense GatedMLP of the same active width.
using RoutedMoE = MoE<8, 2, Glm4Router, GatedMLP, NoSharedExperts>;

// tokens/s and FLOP/s counters for `flops_per_iteration` over kTokens tokens.
inline void set_rates(benchmark::State& state, double flops_per_iteration) {
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(kTokens),
                                                  benchmark::Counter::kIsIterationInvariantRate);
  state.counters["FLOP/s"] = benchmark::Counter(flops_per_iteration,
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

// Attention's T x T products per token, causal masking ignored (as model-FLOP counts do).
inline double mha_attention_flops(std::size_t layers = 1) {
  return attention_flops_per_token(kSeq, 8, 64, 64, layers);
}
inline double mla_attention_flops(std::size_t layers = 1) {
  return attention_flops_per_token(kSeq, 8, 64, 64, layers);  // Exp. 1 MLA: qk 0+64, v 64
}

template <class B>
typename B::Tensor random_activations(std::ptrdiff_t cols, std::uint64_t key) {
  typename B::Tensor x;
  B::resize(x, static_cast<std::ptrdiff_t>(kTokens), cols);
  B::fill_normal(x, key, 1.0);
  return x;
}

// One block of policy `Policy` on backend B with its parameters and activations.
template <class Policy, class B>
struct BlockBench {
  using Block = typename Policy::template Block<B>;
  using Tensor = typename B::Tensor;

  ParameterStore<B> store;
  Initializer init{1, 0.02, InitScheme::Normal};
  RandomStream rng{7};
  PassContext ctx{true, kBatch, kSeq, &rng, 1.0};
  Block block;
  Tensor x, y, dx, dy;

  explicit BlockBench(const ModelConfig& cfg)
      : block(Policy::template make<B>(store, init, "block", cfg)) {
    x = random_activations<B>(static_cast<std::ptrdiff_t>(cfg.hidden_size), 3);
  }
  void forward() {
    if constexpr (requires { block.forward(y, x, ctx); }) block.forward(y, x, ctx);
    else block.forward(y, x);
  }
  void backward() { block.backward(dx, dy); }
  // Forward FLOPs per token of the block's projections (routed experts at K/E of the tokens).
  double matrix_flops_per_token() const {
    if constexpr (requires { Block::experts_count; }) {
      return bench::matrix_flops_per_token(store, static_cast<double>(Block::top_k) /
                                                      static_cast<double>(Block::experts_count));
    } else {
      return bench::matrix_flops_per_token(store);
    }
  }
};

// One optimizer step of the seed recipe on a whole model.
template <class Arch, class B>
struct TrainStepBench {
  ModelConfig cfg;
  Model<Arch, B> model{cfg, 42, InitScheme::Normal};  // the fixed protocol's init
  HybridOptimizer<B> optimizer{model.parameters()};
  Tokens inputs{kBatch, kSeq}, targets{kBatch, kSeq};

  explicit TrainStepBench(const ModelConfig& config = experiment1_config()) : cfg(config) {
    model.train(true);
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      inputs[i] = static_cast<int>((i * 7919) % cfg.vocab_size);
      targets[i] = static_cast<int>((i * 104729 + 1) % cfg.vocab_size);
    }
  }
  double step() {
    const double loss = forward_backward();
    update();
    return loss;
  }
  // The two phases of a step, to time apart: with gradient accumulation a batch costs one
  // forward_backward and 1/accumulation of an update.
  double forward_backward() {
    model.zero_grad();
    return model.forward_backward(inputs, targets).loss;
  }
  void update() {
    clip_grad_norm(model.parameters(), 1.0);
    optimizer.step(1.0);
    model.after_optimizer_step();
  }
  // Training FLOPs per iteration: 3x the forward (forward, input and weight gradients).
  double flops(double routed_fraction, double attention_flops_per_token) const {
    return 3.0 * (projection_flops_per_token(model.parameters(), cfg, routed_fraction) +
                  attention_flops_per_token) *
           static_cast<double>(kTokens);
  }
};

}  // namespace ablate::bench
