// Saving and loading on the CUDA backend: a training checkpoint taken on the GPU resumes bit for
// bit there (weights, optimizer moments, Muon momentum, pending gradients, router biases and
// loads, the random stream), and weights saved from the GPU load into a CPU model unchanged.
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../unit/io_test_util.hpp"
#include "../unit/resume_test_util.hpp"
#include "../unit/test_configs.hpp"
#include "ablate/ablate.hpp"
#include "ablate/io/io.hpp"
#include "ablate/train/trainer.hpp"
#include "cuda_test_util.cuh"

namespace {

using namespace ablate;
using namespace cuda_test;
namespace io = ablate::io;
using resume_test::kBatches;
using resume_test::train;

// The CPU resume test's architectures: dense MHA, MLA with post-LayerNorm, and a GLM4 MoE with
// bias balancing.
using DenseArch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
using MlaArch = Architecture<Attention<MLA>, FFN<MLP>, Norm<LN>, Placement<PostNorm>>;
using MoeArch = Architecture<Attention<MHA>, FFN<Glm4MoE<4, 2>>, Norm<RMS>>;

bool same_bits(const CpuTensor& a, const CpuTensor& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

}  // namespace

TEST_CASE_TEMPLATE("cuda: a checkpoint resumes bit-exact and its weights load on the CPU", Arch,
                   DenseArch, MlaArch, MoeArch) {
  using M = Model<Arch, CUDA>;
  io_test::TempDir dir;
  const ModelConfig cfg = test::small_moe_model_config();  // dropout on: the stream is state
  const TrainConfig tcfg = resume_test::train_config();

  M straight(cfg, 7);
  Trainer<M> straight_trainer(straight, tcfg);
  std::vector<double> straight_losses;
  train(straight_trainer, 0, kBatches, straight_losses);

  // 3 falls inside an accumulation group: pending gradients and router loads are saved too.
  constexpr std::size_t split = 3;
  const auto path = dir / "ckpt.safetensors";
  std::vector<double> losses;
  {
    M first(cfg, 7);
    Trainer<M> trainer(first, tcfg);
    train(trainer, 0, split, losses);
    io::save_checkpoint(path, first, trainer);
  }
  M resumed(cfg, 12345);  // another seed: everything must come from the checkpoint
  Trainer<M> trainer(resumed, tcfg);
  io::load_checkpoint(path, resumed, trainer);
  CHECK(trainer.batches() == split);
  train(trainer, split, kBatches, losses);
  REQUIRE(losses.size() == straight_losses.size());
  for (std::size_t i = 0; i < losses.size(); ++i) {
    CAPTURE(i);
    CHECK(std::memcmp(&losses[i], &straight_losses[i], sizeof(double)) == 0);
  }
  for (const auto& p : straight.parameters()) {
    CAPTURE(p.name);
    const auto* q = resumed.parameters().find(p.name);
    REQUIRE(q != nullptr);
    CHECK(same_bits(to_cpu(q->value), to_cpu(p.value)));
  }
  CHECK(resumed.rng().counter() == straight.rng().counter());

  // The trained GPU weights (and router biases) into a CPU model: the same values, bit for bit.
  const auto weights = dir / "weights.safetensors";
  io::save_weights(straight, weights);
  Model<Arch, CPU> cpu(cfg, 99);
  io::load_weights(cpu, weights);
  for (const auto& p : straight.parameters()) {
    CAPTURE(p.name);
    const auto* q = cpu.parameters().find(p.name);
    REQUIRE(q != nullptr);
    CHECK(same_bits(q->value, to_cpu(p.value)));
  }
  if constexpr (std::is_same_v<Arch, MoeArch>) {
    bool moved = false;
    for (std::size_t l = 0; l < straight.layers().size(); ++l) {
      const CpuTensor g = to_cpu(straight.layers()[l].ffn().router().e_score_correction_bias());
      const CpuTensor c = cpu.layers()[l].ffn().router().e_score_correction_bias();
      CHECK(same_bits(c, g));
      moved = moved || g.cwiseAbs().maxCoeff() > 0;
    }
    CHECK(moved);  // the balancing moved the biases, so restoring them was tested
  }
}
