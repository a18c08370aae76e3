// Parameter counts of whole MoE models at the seed's vocabulary (49152) against the seed's
// reported counts, and the GLM4 MoE model's count against its arithmetic.
#include <doctest/doctest.h>

#include <cstddef>

#include <ablate/ablate.hpp>

namespace {

using namespace ablate;

ModelConfig experiment1() {
  ModelConfig cfg;
  cfg.vocab_size = 49152;
  cfg.hidden_size = 512;
  cfg.num_attention_heads = 8;
  cfg.num_hidden_layers = 3;
  cfg.max_position_embeddings = 256;
  cfg.moe_intermediate_size = 1024;
  cfg.n_shared_experts = 1;
  return cfg;
}

ModelConfig experiment5() {
  ModelConfig cfg = experiment1();
  cfg.hidden_size = 256;
  cfg.num_attention_heads = 4;
  return cfg;
}

template <class Arch>
std::size_t count(const ModelConfig& cfg) {
  const Model<Arch, CPU> model(cfg, 1);
  return model.parameter_count();
}

}  // namespace

TEST_CASE("Experiment 1 baseline (MHA + seed MoE 8x2, width 1024): 53,493,248 parameters") {
  using Arch = Architecture<Attention<MHA>, FFN<SeedMoE<8, 2>>, Norm<RMS>>;
  CHECK(count<Arch>(experiment1()) == 53'493'248);
}

TEST_CASE("Experiment 5 baseline (d 256, seed MoE 8x2): 25,960,192 parameters") {
  using Arch = Architecture<Attention<MHA>, FFN<SeedMoE<8, 2>>, Norm<RMS>>;
  CHECK(count<Arch>(experiment5()) == 25'960'192);
}

TEST_CASE("Experiment 5 gated model (PlainMHA with biases, softmax-gated GatedMLP experts, "
          "post-LayerNorm): 32,256,256 parameters") {
  using Arch = Architecture<Attention<PlainMHA>, FFN<Exp5GatedMoE<8, 2>>, Norm<LN>,
                            Placement<PostNorm>, FinalNorm<RMS>>;
  ModelConfig cfg = experiment5();
  cfg.attention_bias = true;
  CHECK(count<Arch>(cfg) == 32'256'256);
}

TEST_CASE("Experiment 1 GLM4 MoE model (MHA + GLM4 MoE 8x2, one shared expert)") {
  using Arch = Architecture<Attention<MHA>, FFN<Glm4MoE<8, 2>>, Norm<RMS>>;
  const std::size_t n = count<Arch>(experiment1());
  MESSAGE("Experiment 1 GLM4 MoE model (" << Arch::name() << "): " << n << " parameters");
  const std::size_t d = 512, vocab = 49152, width = 1024, experts = 8, layers = 3;
  const std::size_t embedding = vocab * d;              // 25,165,824 (tied with the LM head)
  const std::size_t attention = d * 3 * d + d * d;      // qkv + o, no biases: 1,048,576
  const std::size_t norms = 2 * d;                      // two RMSNorms per layer
  const std::size_t router = experts * d;               // gate.weight [8, 512]: 4,096
  const std::size_t routed = experts * 3 * d * width;   // 8 GatedMLPs: 12,582,912
  const std::size_t shared = 3 * d * (1 * width);       // one shared GatedMLP: 1,572,864
  const std::size_t per_layer = attention + norms + router + routed + shared;  // 15,209,472
  const std::size_t expected = embedding + layers * per_layer + d;              // final norm
  CHECK(expected == 70'794'752);
  CHECK(n == expected);
}
