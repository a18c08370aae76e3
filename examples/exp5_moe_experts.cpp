// Experiment 5: MoE with plain-MLP experts against MoE with gated (SwiGLU) experts at d 256
// (the seed's 003_ run), trained with the seed's recipe (warmup = batches / 20).
//
//   exp5_moe_experts --preset quick                   # the fair comparison, 2 seeds, ~7 min
//   exp5_moe_experts --preset quick --protocol seed   # the seed's runs as they were
//   exp5_moe_experts --params --vocab 49152 --protocol seed
//
// --protocol seed: the seed's "deepseek_moe" model, which also switched to non-causal
// attention without positions and post-LayerNorm (flaw 4 in examples/RESULTS.md).
// --protocol fixed: only the experts differ from the baseline -- gated experts at the same
// width, and at 2/3 of it, where they have the baseline's parameter count -- so width and
// gating can be told apart; every expert starts from the same init (the seed's gated experts
// kept PyTorch's default).
#include "common/experiment.hpp"

namespace {

using namespace ablate;
using examples::ModelSpec;
using examples::Protocol;
using examples::model_spec;

template <std::size_t E, std::size_t K>
using GatedSeedMoE = MoE<E, K, SeedRouter, GatedMLP, NoSharedExperts>;

std::vector<ModelSpec> experiment5_models(Protocol protocol, const ModelConfig& base) {
  const std::size_t d = base.hidden_size;
  ModelConfig moe = base;
  moe.moe_intermediate_size = 4 * d;  // 1024 at d 256
  const std::string w = std::to_string(moe.moe_intermediate_size);

  std::vector<ModelSpec> models;
  models.push_back(model_spec<Architecture<Attention<MHA>, FFN<SeedMoE<8, 2>>, Norm<RMS>>>(
      "baseline", "MHA + seed MoE 8 experts top-2 (MLP experts of width " + w + ")", moe));
  if (protocol == Protocol::seed) {
    ModelConfig seed = moe;
    seed.attention_bias = true;  // nn.MultiheadAttention
    models.push_back(model_spec<Architecture<Attention<PlainMHA>, FFN<Exp5GatedMoE<8, 2>>, Norm<LN>,
                                             Placement<PostNorm>, FinalNorm<RMS>>>(
        "deepseek_moe",
        "NON-causal MHA without positions, post-LayerNorm + softmax-gated MoE 8x2 of GatedMLP " + w +
            " (seed flaw 4)",
        seed));
  } else {
    ModelConfig matched = moe;
    matched.moe_intermediate_size = (2 * moe.moe_intermediate_size + 1) / 3;  // 683 at d 256
    models.push_back(model_spec<Architecture<Attention<MHA>, FFN<GatedSeedMoE<8, 2>>, Norm<RMS>>>(
        "gated_moe", "MHA + seed MoE 8 experts top-2 of GatedMLP " + w + " (only the experts differ)",
        moe));
    models.push_back(model_spec<Architecture<Attention<MHA>, FFN<GatedSeedMoE<8, 2>>, Norm<RMS>>>(
        "gated_moe_matched",
        "MHA + seed MoE 8 experts top-2 of GatedMLP " + std::to_string(matched.moe_intermediate_size) +
            " (the baseline's parameter count)",
        matched));
  }
  return models;
}

}  // namespace

int main(int argc, char** argv) {
  examples::ExperimentDef def;
  def.program = "exp5_moe_experts";
  def.title = "Experiment 5: MLP experts vs gated experts";
  // name, hidden, heads, layers, seq, batch, batches, eval_every, eval_windows, compact_vocab,
  // validation_fraction, fixed-protocol seeds, threads
  def.full = {"full", 256, 4, 3, 256, 16, 1000, 100, 0, 0, 0.1, 3, 0};
  def.quick = {"quick", 128, 4, 3, 64, 8, 600, 75, 128, 4096, 0.1, 2, 1};
  def.warmup_divisor = 20;
  def.models = experiment5_models;
  return examples::run_experiment(def, argc, argv);
}
