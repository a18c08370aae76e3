// Trainer: gradient accumulation, step cadence, schedule use and determinism, on a fake model
// whose loss is a quadratic in two parameters.
#include <doctest/doctest.h>

#include <limits>
#include <new>
#include <vector>

#include "ablate/backend/cpu/backend.hpp"
#include "ablate/blocks/moe/moe.hpp"
#include "ablate/core/loss_stats.hpp"
#include "ablate/core/tokens.hpp"
#include "ablate/model/architecture.hpp"
#include "ablate/model/model.hpp"
#include "ablate/train/trainer.hpp"
#include "test_configs.hpp"

namespace {

using B = ablate::CPUBackend<double>;
using Tensor = B::Tensor;

// loss = 0.5 ||W - T||^2 + 0.5 ||n - t||^2, with targets shifted by the batch's first token so
// batches differ.
struct QuadraticModel {
  using Backend = B;

  ablate::ParameterStore<B> store;
  ablate::Parameter<B>* w;
  ablate::Parameter<B>* n;
  Tensor w_target, n_target;
  int hook_calls = 0, discard_calls = 0;
  bool training = false;
  double loss_offset = 0, grad_offset = 0;  // added to the loss and to one gradient element
  bool out_of_memory = false;  // the backward throws std::bad_alloc half-way

  QuadraticModel() {
    w = &store.add("layers.0.mlp.up_proj.weight", {4, 6}, ablate::ParamRole::Matrix);
    n = &store.add("norm.weight", {6}, ablate::ParamRole::Norm);
    B::fill_normal(w->value, 1, 0.5);
    B::fill(n->value, 1.0);
    w_target.resize(4, 6);
    n_target.resize(1, 6);
    B::fill_normal(w_target, 2, 1.0);
    B::fill_normal(n_target, 3, 1.0);
  }

  ablate::ParameterStore<B>& parameters() { return store; }

  ablate::LossStats forward_backward(const ablate::Tokens& inputs, const ablate::Tokens&,
                                     double grad_scale) {
    const double shift = 0.01 * inputs[0];
    const Tensor dw = w->value - (w_target.array() + shift).matrix();
    const Tensor dn = n->value - (n_target.array() + shift).matrix();
    B::axpy(w->grad, grad_scale, dw);
    if (out_of_memory) throw std::bad_alloc();  // after one gradient of two
    B::axpy(n->grad, grad_scale, dn);
    w->grad(0, 0) += grad_offset;
    ablate::LossStats stats;
    stats.loss = 0.5 * (dw.squaredNorm() + dn.squaredNorm()) + loss_offset;
    stats.tokens = inputs.size();
    return stats;
  }
  void zero_grad() { store.zero_grad(); }
  void train(bool on) { training = on; }
  void after_optimizer_step() { ++hook_calls; }
  void discard_accumulation_group() { ++discard_calls; }
};

ablate::Tokens batch(int i) { return ablate::Tokens(2, 3, i % 7); }

ablate::TrainConfig small_config() {
  ablate::TrainConfig config;
  config.total_batches = 40;
  config.grad_accumulation = 4;
  return config;
}

}  // namespace

TEST_CASE("train: Trainer accumulates grad/accum and steps every accum batches") {
  QuadraticModel model;
  ablate::Trainer<QuadraticModel> trainer(model, small_config());
  const Tensor w0 = model.w->value;
  const Tensor n0 = model.n->value;
  const Tensor dw = w0 - model.w_target;  // batch 0 has shift 0

  // Batches 1-3: gradients pile up at a quarter each, parameters stay.
  for (int i = 0; i < 3; ++i) {
    const ablate::TrainStep r = trainer.step(batch(0), batch(0));
    CHECK_FALSE(r.optimizer_step);
    CHECK(r.lr_factor == 0.0);
    CHECK(model.training);
  }
  CHECK((model.w->grad - 0.75 * dw).cwiseAbs().maxCoeff() < 1e-15);
  CHECK(model.w->value == w0);
  CHECK(model.hook_calls == 0);

  // Batch 4: an optimizer step at factor(0) = 0, so only optimizer state moves (seed quirk).
  const Tensor full = model.w->grad + 0.25 * dw;
  const Tensor fn = model.n->grad + 0.25 * (n0 - model.n_target);
  const ablate::TrainStep r = trainer.step(batch(0), batch(0));
  CHECK(r.optimizer_step);
  CHECK(r.lr_factor == 0.0);
  CHECK(r.grad_norm == doctest::Approx(std::sqrt(full.squaredNorm() + fn.squaredNorm())));
  CHECK(model.hook_calls == 1);
  CHECK(trainer.optimizer_steps() == 1);
  CHECK(model.w->grad.isZero(0.0));
  CHECK(model.w->value == w0);
  CHECK(trainer.optimizer().adamw().steps() == 1);
  CHECK_FALSE(trainer.optimizer().muon().states()[0].momentum.isZero(0.0));

  // Schedule laid out over 40 batches with warmup 4, stepped per optimizer step.
  CHECK(trainer.schedule().total_steps() == 40);
  CHECK(trainer.schedule().warmup_steps() == 4);
  CHECK(trainer.lr_factor() == 0.25);
  for (int i = 4; i < 8; ++i) {
    const ablate::TrainStep s = trainer.step(batch(i), batch(i));
    CHECK(s.optimizer_step == (i == 7));
    CHECK(s.lr_factor == 0.25);
  }
  CHECK(model.hook_calls == 2);
  CHECK(model.w->value != w0);
  CHECK(model.n->value != n0);
  CHECK(trainer.batches() == 8);
}

TEST_CASE("train: a non-finite loss or gradient norm throws before any weight changes, out of memory drops the group") {
  QuadraticModel model;
  ablate::Trainer<QuadraticModel> trainer(model, small_config());
  for (int i = 0; i < 10; ++i) trainer.step(batch(i), batch(i));  // 2 optimizer steps and 2 batches
  const Tensor w = model.w->value;
  const Tensor m = trainer.optimizer().adamw().states()[0].m;
  int drops = 0;
  auto unchanged = [&](std::size_t batches) {
    CHECK(model.discard_calls == ++drops);  // the model hears of each dropped group
    CHECK(trainer.batches() == batches);
    CHECK(trainer.optimizer_steps() == 2);
    CHECK(trainer.optimizer().adamw().steps() == 2);
    CHECK(model.w->value == w);
    CHECK(trainer.optimizer().adamw().states()[0].m == m);
    CHECK(model.w->grad.isZero(0.0));
    CHECK(model.n->grad.isZero(0.0));
  };

  model.loss_offset = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(trainer.step(batch(10), batch(10)),
                       doctest::Contains("Trainer::step: batch 11 has a non-finite loss (cross-entropy "),
                       ablate::non_finite_error);
  unchanged(8);  // the group's two earlier batches are dropped with it
  model.loss_offset = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(trainer.step(batch(8), batch(8)),
                       doctest::Contains("the 1 batch(es) of this accumulation group are dropped"),
                       ablate::non_finite_error);
  unchanged(8);

  // A finite loss whose gradient overflows: found at the optimizer step, before the update.
  model.loss_offset = 0;
  model.grad_offset = std::numeric_limits<double>::infinity();
  for (int i = 8; i < 11; ++i) CHECK_FALSE(trainer.step(batch(i), batch(i)).optimizer_step);
  CHECK_THROWS_WITH_AS(trainer.step(batch(11), batch(11)),
                       doctest::Contains("the gradient norm of optimizer step 3 is inf; the weights "
                                         "are those of optimizer step 2 and the 4 batch(es)"),
                       ablate::non_finite_error);
  unchanged(8);

  // Memory that runs out in a backward: the group is dropped likewise, the exception goes on.
  model.grad_offset = 0;
  trainer.step(batch(8), batch(8));
  model.out_of_memory = true;
  CHECK_THROWS_AS(trainer.step(batch(9), batch(9)), std::bad_alloc);
  unchanged(8);
  model.out_of_memory = false;

  // Stepping on starts a fresh group.
  for (int i = 8; i < 12; ++i) trainer.step(batch(i), batch(i));
  CHECK(trainer.optimizer_steps() == 3);
  CHECK(model.w->value != w);
}

TEST_CASE("train: Trainer reduces the loss and is deterministic") {
  auto run = [](QuadraticModel& model) {
    ablate::TrainConfig config = small_config();
    config.optimizer.muon_lr = 0.1;
    config.optimizer.adamw_lr = 0.05;
    ablate::Trainer<QuadraticModel> trainer(model, config);
    double first = 0, later = 0;
    for (int i = 0; i < 40; ++i) {
      const double loss = trainer.step(batch(i), batch(i)).stats.loss;
      if (i == 0) first = loss;
      if (i == 35) later = loss;  // same batch contents as i == 0, after 8 optimizer steps
    }
    CHECK(later < 0.8 * first);
    CHECK(trainer.optimizer_steps() == 10);
  };
  QuadraticModel a, b;
  run(a);
  run(b);
  CHECK(a.w->value == b.w->value);
  CHECK(a.n->value == b.n->value);
}

TEST_CASE("train: TrainConfig schedule layouts and validation") {
  ablate::TrainConfig config = small_config();
  CHECK(config.schedule_total() == 40);
  config.schedule_over_batches = false;
  CHECK(config.schedule_total() == 10);

  QuadraticModel model;
  ablate::Trainer<QuadraticModel> trainer(model, config);
  CHECK(trainer.schedule().total_steps() == 10);
  CHECK(trainer.schedule().warmup_steps() == 1);

  config.grad_accumulation = 0;
  CHECK_THROWS_AS(config.validate(), ablate::invalid_input);
  config.grad_accumulation = 50;  // not one optimizer step in 40 batches
  CHECK_THROWS_AS(config.validate(), ablate::invalid_input);
  config.schedule_over_batches = true;  // the seed's layout: a run that never steps all the same
  CHECK_THROWS_WITH_AS(config.validate(),
                       doctest::Contains("fewer batches (40) than one optimizer step needs (50)"),
                       ablate::invalid_input);
  config.grad_accumulation = 4;
  config.grad_clip = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(config.validate(), doctest::Contains("grad_clip is NaN"), ablate::invalid_input);
  config.grad_clip = std::numeric_limits<double>::infinity();  // no clipping
  CHECK_NOTHROW(config.validate());
}

TEST_CASE("train: a dropped accumulation group takes its GLM4 router loads with it") {
  // The loads of batches that never reach an optimizer step must not move the balancing bias.
  using Arch = ablate::Architecture<ablate::Attention<ablate::MHA>, ablate::FFN<ablate::Glm4MoE<4, 2>>,
                                    ablate::Norm<ablate::RMS>>;
  using M = ablate::Model<Arch, ablate::CPUBackend<double>>;
  M model(ablate::test::small_moe_model_config(), 3);
  ablate::TrainConfig config;
  config.total_batches = 8;
  config.grad_accumulation = 2;
  ablate::Trainer<M> trainer(model, config);
  const ablate::Tokens tokens(2, 8, 5);
  const auto& router = model.layers()[0].ffn().router();
  const std::vector<std::size_t> none(4, 0);

  trainer.step(tokens, tokens);  // batch 1 of the group: its loads wait for the step
  CHECK(router.pending_load() != none);
  model.parameters().at("embed_tokens.weight").value(5, 0) =
      std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_AS(trainer.step(tokens, tokens), ablate::non_finite_error);
  CHECK(trainer.batches() == 0);
  for (const auto& layer : model.layers()) CHECK(layer.ffn().router().pending_load() == none);
}
