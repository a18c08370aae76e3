// Saving and loading on the CUDA backend: a training checkpoint taken on the GPU resumes bit for
// bit there (weights, optimizer moments, Muon momentum, pending gradients, router biases and
// loads, the random stream), and weights saved from the GPU load into a CPU model unchanged.
#include <cstring>
#include <string>
#include <vector>

#include "../unit/io_test_util.hpp"
#include "ablate/ablate.hpp"
#include "ablate/io/io.hpp"
#include "ablate/train/trainer.hpp"
#include "cuda_test_util.cuh"

namespace {

using namespace ablate;
using namespace cuda_test;
namespace io = ablate::io;

using DenseMHA = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
using Glm4MLA = Architecture<Attention<MLA>, FFN<Glm4MoE<8, 2>>, Norm<RMS>>;

constexpr std::size_t kBatches = 8;

ModelConfig io_config() {
  ModelConfig cfg;
  cfg.vocab_size = 96;
  cfg.hidden_size = 64;
  cfg.num_attention_heads = 4;
  cfg.num_hidden_layers = 2;
  cfg.intermediate_size = 128;
  cfg.moe_intermediate_size = 32;
  cfg.max_position_embeddings = 32;
  cfg.hidden_dropout = 0.1;  // the random stream's position is part of the state
  cfg.attention_dropout = 0.1;
  cfg.q_lora_rank = 32;
  cfg.kv_lora_rank = 32;
  cfg.qk_rope_head_dim = 8;
  cfg.qk_nope_head_dim = 8;
  cfg.v_head_dim = 16;
  return cfg;
}

TrainConfig io_train_config() {
  TrainConfig t;
  t.total_batches = kBatches;
  t.grad_accumulation = 2;
  t.warmup_divisor = 4;
  t.optimizer.muon_lr = 0.02;
  t.optimizer.adamw_lr = 3e-3;
  return t;
}

Tokens io_batch(std::size_t i, std::size_t salt) {
  Tokens t(4, 16);
  for (std::size_t k = 0; k < t.size(); ++k)
    t[k] = static_cast<int>((k * (3 + salt) + i * 5 + salt) % 89);
  return t;
}

template <class M>
void train(Trainer<M>& trainer, std::size_t from, std::size_t to, std::vector<double>& losses) {
  for (std::size_t i = from; i < to; ++i)
    losses.push_back(trainer.step(io_batch(i, 0), io_batch(i, 1)).stats.loss);
}

bool same_bits(const CpuTensor& a, const CpuTensor& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

}  // namespace

TEST_CASE_TEMPLATE("cuda: a checkpoint resumes bit-exact and its weights load on the CPU", Arch,
                   DenseMHA, Glm4MLA) {
  using M = Model<Arch, CUDA>;
  io_test::TempDir dir;
  const ModelConfig cfg = io_config();
  const TrainConfig tcfg = io_train_config();

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
  if constexpr (std::is_same_v<Arch, Glm4MLA>) {
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
