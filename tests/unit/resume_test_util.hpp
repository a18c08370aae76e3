// The training run the checkpoint-resume tests split in two (on the CPU and on the GPU): its
// train config, its batches and the loop, so that both backends' tests run the same schedule.
#pragma once

#include <ablate/core/tokens.hpp>
#include <ablate/train/train_config.hpp>
#include <ablate/train/trainer.hpp>
#include <cstddef>
#include <vector>

namespace resume_test {

constexpr std::size_t kBatches = 8;

// Accumulation over two batches (so a split can fall inside a group), a short warmup, and
// learning rates large enough that every step changes the weights.
inline ablate::TrainConfig train_config() {
  ablate::TrainConfig t;
  t.total_batches = kBatches;
  t.grad_accumulation = 2;
  t.warmup_divisor = 4;
  t.optimizer.muon_lr = 0.02;
  t.optimizer.adamw_lr = 3e-3;
  return t;
}

// Batch i: [2, 8] ids below 17 (the small test configs' vocabulary); salt 0 the inputs, 1 the
// targets.
inline ablate::Tokens batch(std::size_t i, std::size_t salt) {
  ablate::Tokens t(2, 8);
  for (std::size_t k = 0; k < t.size(); ++k)
    t[k] = static_cast<int>((k * (3 + salt) + i * 5 + salt) % 17);
  return t;
}

// Trains over batches [from, to), appending the losses.
template <class M>
void train(ablate::Trainer<M>& trainer, std::size_t from, std::size_t to,
           std::vector<double>& losses) {
  for (std::size_t i = from; i < to; ++i)
    losses.push_back(trainer.step(batch(i, 0), batch(i, 1)).stats.loss);
}

}  // namespace resume_test
