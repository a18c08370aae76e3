// Whole models on the CUDA backend against the CPU backend: the five Experiment 1
// architectures' loss and every parameter gradient on the same weights, the causality probe for
// every attention variant, and a 200-step training run whose loss curve follows the CPU's.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <deque>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ablate/ablate.hpp"
#include "ablate/train/clip.hpp"
#include "ablate/train/hybrid_optimizer.hpp"
#include "cuda_test_util.cuh"

namespace {

using namespace ablate;
using namespace cuda_test;

using Baseline = Architecture<Attention<MHA>, FFN<SeedMoE<8, 2>>, Norm<RMS>>;
using DenseMHA = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
using DenseMLA = Architecture<Attention<MLA>, FFN<GatedMLP>, Norm<RMS>>;
using Glm4MHA = Architecture<Attention<MHA>, FFN<Glm4MoE<8, 2>>, Norm<RMS>>;
using Glm4MLA = Architecture<Attention<MLA>, FFN<Glm4MoE<8, 2>>, Norm<RMS>>;
// Experiment 5's seed-protocol model: non-causal MHA with biases, softmax-gated MoE with its
// variance auxiliary loss, post-LayerNorm and a final RMSNorm.
using Exp5Seed = Architecture<Attention<PlainMHA>, FFN<Exp5GatedMoE<8, 2>>, Norm<LN>,
                              Placement<PostNorm>, FinalNorm<RMS>>;

// The gradient test hands the GPU's routing of every MoE layer to the CPU reference through
// this expression; were it to stop compiling (a rename), the replay would silently be skipped.
template <class Arch>
constexpr bool exposes_routing =
    requires(Model<Arch, CUDA>& m) { m.layers().front().ffn().routing_indices(); };
static_assert(exposes_routing<Baseline> && exposes_routing<Glm4MHA> && exposes_routing<Glm4MLA> &&
              exposes_routing<Exp5Seed>);

ModelConfig small_config(double dropout = 0.0) {
  ModelConfig cfg;
  cfg.vocab_size = 96;
  cfg.hidden_size = 64;
  cfg.num_attention_heads = 4;
  cfg.num_hidden_layers = 2;
  cfg.intermediate_size = 128;
  cfg.moe_intermediate_size = 32;
  cfg.max_position_embeddings = 32;
  cfg.hidden_dropout = dropout;
  cfg.attention_dropout = dropout;
  cfg.q_lora_rank = 32;
  cfg.kv_lora_rank = 32;
  cfg.qk_rope_head_dim = 8;
  cfg.qk_nope_head_dim = 8;
  cfg.v_head_dim = 16;
  return cfg;
}

Tokens pattern_tokens(std::size_t batch, std::size_t seq, std::size_t vocab, std::uint64_t seed) {
  // A learnable stream: each token is a fixed function of the previous one, with some noise.
  Tokens t(batch, seq);
  std::uint64_t state = seed;
  for (std::size_t b = 0; b < batch; ++b) {
    int prev = static_cast<int>(mix64(seed + b) % vocab);
    for (std::size_t s = 0; s < seq; ++s) {
      state = mix64(state);
      const bool noise = state % 8 == 0;
      prev = noise ? static_cast<int>((state >> 8) % vocab) : static_cast<int>((prev * 7 + 3) % vocab);
      t(b, s) = prev;
    }
  }
  return t;
}

// The CPU backend with its top-k choices replaced by the GPU's.  The router's GEMM reads bf16
// operands on the GPU, so a token whose K-th and (K+1)-th selection scores lie within that
// rounding of each other can pick another expert there; its gradients then differ by a whole
// expert's contribution (a CPU emulation of the bf16 GEMMs flips 2 of 256 tokens of Glm4MHA and
// gives a 27% error on an expert's gradient), which no tolerance absorbs.  So the CPU reference
// routes every token as the GPU did; top-k itself is compared exactly in test_cuda_moe.cu, and
// the test checks that only a few near-tied tokens needed it.
struct ReplayCPU : CPU {
  static inline std::deque<std::vector<std::int32_t>> forced;  // one entry per MoE layer
  static inline std::size_t replaced = 0, tokens = 0;

  static void topk_rows(Indices& idx, const Tensor& scores, Eigen::Index k) {
    CPU::topk_rows(idx, scores, k);
    take(idx, k);
  }
  static void group_limited_topk(Indices& idx, Tensor& masked, Tensor& group_scores,
                                 const Tensor& choice, Eigen::Index n_group, Eigen::Index topk_group,
                                 Eigen::Index k) {
    CPU::group_limited_topk(idx, masked, group_scores, choice, n_group, topk_group, k);
    take(idx, k);
  }

 private:
  static void take(Indices& idx, Eigen::Index k) {
    if (forced.empty()) return;
    Indices gpu = std::move(forced.front());
    forced.pop_front();
    REQUIRE(gpu.size() == idx.size());
    const auto K = static_cast<std::ptrdiff_t>(k);
    for (std::ptrdiff_t begin = 0; begin < static_cast<std::ptrdiff_t>(idx.size()); begin += K) {
      Indices a(idx.begin() + begin, idx.begin() + begin + K), b(gpu.begin() + begin, gpu.begin() + begin + K);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      replaced += a != b;
      ++tokens;
    }
    idx = std::move(gpu);
  }
};

// Copies every parameter (and router bias buffer state through the weights) CPU -> CUDA, so the
// comparison does not depend on the two backends' initialisers agreeing to the last bit.
template <class Arch, class C>
void copy_weights(Model<Arch, CUDA>& gpu, const Model<Arch, C>& cpu) {
  auto g = gpu.parameters().begin();
  for (const auto& p : cpu.parameters()) {
    REQUIRE(g != gpu.parameters().end());
    REQUIRE(g->name == p.name);
    g->value = to_gpu(p.value);
    ++g;
  }
}

template <class Arch>
void check_loss_and_gradients(const ModelConfig& cfg) {
  Model<Arch, ReplayCPU> cpu(cfg, 7);
  Model<Arch, CUDA> gpu(cfg, 7);
  copy_weights(gpu, cpu);
  const Tokens inputs = pattern_tokens(4, 32, cfg.vocab_size, 1);
  const Tokens targets = pattern_tokens(4, 32, cfg.vocab_size, 2);
  cpu.train(true);
  gpu.train(true);
  cpu.zero_grad();
  gpu.zero_grad();
  // The GPU first: the CPU reference then takes its routing (ReplayCPU).
  const LossStats g = gpu.forward_backward(inputs, targets);
  ReplayCPU::forced.clear();
  ReplayCPU::replaced = ReplayCPU::tokens = 0;
  if constexpr (exposes_routing<Arch>)
    for (const auto& layer : gpu.layers()) ReplayCPU::forced.push_back(layer.ffn().routing_indices().to_host());
  const LossStats c = cpu.forward_backward(inputs, targets);
  CHECK(ReplayCPU::forced.empty());  // every MoE layer took the GPU's routing
  MESSAGE(Arch::name() << ": loss cpu " << c.loss << " cuda " << g.loss << "; tokens routed "
                       << "differently by the GPU (near ties) " << ReplayCPU::replaced << " of "
                       << ReplayCPU::tokens);
  CHECK(ReplayCPU::replaced * 20 <= ReplayCPU::tokens);  // near ties only: at most 5% of them
  CHECK(g.loss == doctest::Approx(c.loss).epsilon(5e-3));
  CHECK(g.aux_loss == doctest::Approx(c.aux_loss).epsilon(2e-2).scale(1e-3));
  CHECK(g.tokens == c.tokens);
  auto gp = gpu.parameters().begin();
  for (const auto& p : cpu.parameters()) {
    CAPTURE(p.name);
    // bf16 GEMM operands through two layers forward and back: a few percent in norm at most.
    CHECK(relative_error(gp->grad, p.grad) < 5e-2);
    ++gp;
  }
}

template <class Arch>
bool earlier_logits_change_on_gpu(std::size_t j) {
  const ModelConfig cfg = small_config();
  Model<Arch, CUDA> model(cfg, 11);
  model.eval();
  const std::size_t seq = 16;
  const Tokens a = pattern_tokens(2, seq, cfg.vocab_size, 3);
  Tokens b = a;
  for (std::size_t s = 0; s < 2; ++s) b(s, j) = static_cast<int>((a(s, j) + 5) % cfg.vocab_size);
  const CpuTensor la = to_cpu(model.forward(a));
  const CpuTensor lb = to_cpu(model.forward(b));
  bool earlier = false, at_j = false;
  for (std::size_t s = 0; s < 2; ++s) {
    for (std::size_t t = 0; t < j; ++t)
      earlier |= la.row(static_cast<Eigen::Index>(s * seq + t)) != lb.row(static_cast<Eigen::Index>(s * seq + t));
    at_j |= la.row(static_cast<Eigen::Index>(s * seq + j)) != lb.row(static_cast<Eigen::Index>(s * seq + j));
  }
  CHECK(at_j);
  return earlier;
}

template <class Arch, class B>
std::vector<double> train_curve(int steps) {
  const ModelConfig cfg = small_config();
  Model<Arch, B> model(cfg, 5);
  if constexpr (std::is_same_v<B, CUDA>) {
    Model<Arch, CPU> reference(cfg, 5);
    copy_weights(model, reference);
  }
  HybridOptimizer<B> optimizer(model.parameters());
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    const Tokens batch = pattern_tokens(8, 33, cfg.vocab_size, 100 + static_cast<std::uint64_t>(step));
    Tokens inputs(8, 32), targets(8, 32);
    for (std::size_t b = 0; b < 8; ++b)
      for (std::size_t s = 0; s < 32; ++s) {
        inputs(b, s) = batch(b, s);
        targets(b, s) = batch(b, s + 1);
      }
    model.train(true);
    model.zero_grad();
    losses.push_back(model.forward_backward(inputs, targets).loss);
    clip_grad_norm(model.parameters(), 1.0);
    optimizer.step(1.0);
    model.after_optimizer_step();
  }
  return losses;
}

}  // namespace

TEST_CASE_TEMPLATE("cuda: loss and every gradient match the CPU backend (Experiment 1 models)", Arch,
                   Baseline, DenseMHA, DenseMLA, Glm4MHA, Glm4MLA) {
  check_loss_and_gradients<Arch>(small_config(0.0));
}

TEST_CASE("cuda: loss and every gradient match the CPU backend (Experiment 5's seed-protocol model)") {
  ModelConfig cfg = small_config(0.0);
  cfg.attention_bias = true;
  check_loss_and_gradients<Exp5Seed>(cfg);
}

TEST_CASE_TEMPLATE("cuda: with dropout on, the masks equal the CPU's", Arch, DenseMHA, DenseMLA) {
  check_loss_and_gradients<Arch>(small_config(0.1));
}

TEST_CASE_TEMPLATE("cuda: causal attention variants never read later tokens", Attn, MHA, MLA) {
  using Arch = Architecture<Attention<Attn>, FFN<GatedMLP>, Norm<RMS>>;
  for (std::size_t j : {1u, 7u, 15u}) {
    CAPTURE(j);
    CHECK_FALSE(earlier_logits_change_on_gpu<Arch>(j));
  }
}

TEST_CASE_TEMPLATE("cuda: the causality probe catches non-causal attention", Attn, NonCausalMHA,
                   PlainMHA, NonCausalMLA) {
  using Arch = Architecture<Attention<Attn>, FFN<MLP>, Norm<RMS>>;
  CHECK(earlier_logits_change_on_gpu<Arch>(7));
}

TEST_CASE_TEMPLATE("cuda: a 200-step training run follows the CPU's loss curve", Arch, DenseMHA, Glm4MLA) {
  const int steps = 200;
  const std::vector<double> cpu = train_curve<Arch, CPU>(steps);
  const std::vector<double> gpu = train_curve<Arch, CUDA>(steps);
  // Compare 20-step window means: single steps of two runs in different precision drift apart
  // step by step, but the curves must agree.
  for (int w = 0; w < steps; w += 20) {
    double c = 0, g = 0;
    for (int i = w; i < w + 20; ++i) {
      c += cpu[static_cast<std::size_t>(i)] / 20;
      g += gpu[static_cast<std::size_t>(i)] / 20;
    }
    CAPTURE(w);
    CHECK(g == doctest::Approx(c).epsilon(0.03));
  }
  MESSAGE(Arch::name() << ": loss " << cpu.front() << " -> " << cpu.back() << " (cpu), "
                       << gpu.front() << " -> " << gpu.back() << " (cuda)");
  CHECK(cpu.back() < 0.7 * cpu.front());  // the run learns something, so the comparison means something
}

TEST_CASE("cuda: a seeded run is deterministic") {
  const std::vector<double> a = train_curve<Glm4MHA, CUDA>(5);
  const std::vector<double> b = train_curve<Glm4MHA, CUDA>(5);
  CHECK(a == b);
}

TEST_CASE("cuda: a model whose head dims the CUDA kernels cannot take is refused when built") {
  // The CPU backend takes these configs; the CUDA one must say so before the first step.
  const auto build = [](auto model_tag, const ModelConfig& cfg) {
    using M = typename decltype(model_tag)::type;
    M model(cfg, 1);
  };
  ModelConfig wide = small_config();
  wide.hidden_size = 1200;  // 4 heads of 300
  CHECK_NOTHROW(build(std::type_identity<Model<DenseMHA, CPU>>{}, wide));
  CHECK_THROWS_WITH_AS(build(std::type_identity<Model<DenseMHA, CUDA>>{}, wide),
                       doctest::Contains("MultiHeadAttention: CUDA attention supports head dims"),
                       ablate::invalid_input);
  ModelConfig latent = small_config();
  latent.v_head_dim = 300;
  CHECK_THROWS_WITH_AS(build(std::type_identity<Model<DenseMLA, CUDA>>{}, latent),
                       doctest::Contains("MLA: CUDA attention supports head dims"),
                       ablate::invalid_input);
}
