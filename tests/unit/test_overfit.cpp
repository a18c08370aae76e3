// End-to-end learning: a small model trained with the seed's Muon + AdamW recipe memorises one
// fixed batch, for a dense and a latent-attention architecture.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>
#include <ablate/train/clip.hpp>
#include <ablate/train/hybrid_optimizer.hpp>

namespace {

using namespace ablate;

template <class Arch>
std::pair<double, double> overfit_one_batch(int steps) {
  ModelConfig cfg;
  cfg.vocab_size = 32;
  cfg.hidden_size = 32;
  cfg.num_attention_heads = 4;
  cfg.num_hidden_layers = 2;
  cfg.intermediate_size = 64;
  cfg.max_position_embeddings = 16;
  cfg.hidden_dropout = 0.0;
  cfg.attention_dropout = 0.0;
  cfg.q_lora_rank = 16;
  cfg.kv_lora_rank = 16;
  cfg.qk_rope_head_dim = 8;
  cfg.v_head_dim = 8;
  Model<Arch, CPU> model(cfg, 1);
  model.train(true);
  HybridOptimizer<CPU> optimizer(model.parameters());
  Tokens inputs(4, 16), targets(4, 16);
  std::uint64_t state = 12345;
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    state = mix64(state);
    inputs[i] = static_cast<int>(state % cfg.vocab_size);
    targets[i] = static_cast<int>((state >> 20) % cfg.vocab_size);
  }
  double first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    model.zero_grad();
    last = model.forward_backward(inputs, targets).loss;
    if (step == 0) first = last;
    clip_grad_norm(model.parameters(), 1.0);
    optimizer.step(1.0);
  }
  model.eval();
  last = model.evaluate(inputs, targets).loss;
  return {first, last};
}

}  // namespace

TEST_CASE_TEMPLATE("a small model overfits one fixed batch (loss falls by more than 90%)", Arch,
                   Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>,
                   Architecture<Attention<MLA>, FFN<MLP>, Norm<RMS>>) {
  const auto [first, last] = overfit_one_batch<Arch>(300);
  MESSAGE("loss " << first << " -> " << last);
  CHECK(last < 0.1 * first);
}
