// Trainer: the seed's training loop, one batch per call.
//
//   loss = (ce + aux) / accum;  loss.backward()
//   every accum-th batch: clip_grad_norm_(1.0); optimizer.step(); zero_grad(); scheduler.step()
//
// The model is duck-typed; it must provide
//   using Backend = ...;
//   ParameterStore<Backend>& parameters();
//   LossStats forward_backward(const Tokens& inputs, const Tokens& targets, double grad_scale);
//       // ADDS the gradients of grad_scale * (mean CE + aux loss) to the .grad tensors
//   void zero_grad();
//   void train(bool on);
//   void after_optimizer_step();  // e.g. auxiliary-loss-free MoE bias update
//   void discard_accumulation_group();  // the batches since the last optimizer step are dropped
#pragma once

#include <cmath>
#include <cstddef>
#include <new>
#include <stdexcept>
#include <string>

#include "ablate/core/error.hpp"
#include "ablate/core/loss_stats.hpp"
#include "ablate/core/tokens.hpp"
#include "ablate/train/clip.hpp"
#include "ablate/train/hybrid_optimizer.hpp"
#include "ablate/train/schedule.hpp"
#include "ablate/train/train_config.hpp"

namespace ablate {

// Thrown by Trainer::step when training produced a NaN or an infinity.
class non_finite_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What one call to Trainer::step did.
struct TrainStep {
  LossStats stats;               // the batch's (unscaled) loss, accuracy, aux loss
  bool optimizer_step = false;   // true on every grad_accumulation-th batch
  double grad_norm = 0.0;        // pre-clip global norm, when optimizer_step
  double lr_factor = 0.0;        // factor this step used, else the one the next step will use
};

template <class Model>
class Trainer {
 public:
  using Backend = typename Model::Backend;

  // The optimizer groups are taken from the model's parameters now; the model must outlive
  // the trainer and must not add parameters afterwards.
  Trainer(Model& model, const TrainConfig& config)
      : model_(model),
        config_(validated(config)),
        schedule_(WarmupCosineSchedule::with_divisor(config_.schedule_total(),
                                                     config_.warmup_divisor,
                                                     config_.min_lr_ratio)),
        optimizer_(model.parameters(), config_.optimizer) {
    model_.zero_grad();
  }

  // One batch.  As in the seed, gradients of a last incomplete accumulation group are never
  // applied.  A loss or gradient norm that is not finite throws non_finite_error before any
  // weight changes: the weights and optimizer state stay those of the last optimizer step, and
  // the batches of the current accumulation group are dropped (gradients zeroed, the batch
  // count back at the group's start, a GLM4 router's load counts of them dropped), so a caller
  // may skip the data and step on, or stop with the model of the last good step.  Memory that
  // runs out inside the batch (std::bad_alloc, perhaps half-way through the backward) drops the
  // group the same way before the exception goes on: a smaller batch may follow.
  TrainStep step(const Tokens& inputs, const Tokens& targets) {
    model_.train(true);
    TrainStep out;
    try {
      out.stats = model_.forward_backward(inputs, targets,
                                          1.0 / static_cast<double>(config_.grad_accumulation));
    } catch (const std::bad_alloc&) {
      discard_group();
      throw;
    }
    if (!std::isfinite(out.stats.loss) || !std::isfinite(out.stats.aux_loss))
      drop_group(detail::concat("batch ", batches_ + 1, " has a non-finite loss (cross-entropy ",
                                out.stats.loss, ", auxiliary loss ", out.stats.aux_loss, ")"));
    ++batches_;
    if (batches_ % config_.grad_accumulation == 0) {
      out.optimizer_step = true;
      out.grad_norm = clip_grad_norm(model_.parameters(), config_.grad_clip);
      if (!std::isfinite(out.grad_norm)) {
        --batches_;
        drop_group(detail::concat("the gradient norm of optimizer step ", optimizer_steps_ + 1,
                                  " is ", out.grad_norm));
      }
      out.lr_factor = schedule_.factor(optimizer_steps_);
      optimizer_.step(out.lr_factor);
      model_.after_optimizer_step();
      model_.zero_grad();
      ++optimizer_steps_;
    } else {
      out.lr_factor = lr_factor();
    }
    return out;
  }

  // The schedule factor the next optimizer step will use.
  double lr_factor() const { return schedule_.factor(optimizer_steps_); }

  std::size_t batches() const { return batches_; }
  std::size_t optimizer_steps() const { return optimizer_steps_; }
  // For resuming from a checkpoint (together with the optimizer state).
  void set_progress(std::size_t batches, std::size_t optimizer_steps) {
    batches_ = batches;
    optimizer_steps_ = optimizer_steps;
  }

  const TrainConfig& config() const { return config_; }
  const WarmupCosineSchedule& schedule() const { return schedule_; }
  HybridOptimizer<Backend>& optimizer() { return optimizer_; }
  const HybridOptimizer<Backend>& optimizer() const { return optimizer_; }

 private:
  // Zeroes the gradients of the accumulation group that holds batch batches_ + 1 and sets the
  // batch count back to the group's start; the number of batches dropped, that one included.
  std::size_t discard_group() {
    const std::size_t dropped = batches_ % config_.grad_accumulation + 1;
    model_.zero_grad();
    model_.discard_accumulation_group();
    batches_ -= dropped - 1;
    return dropped;
  }
  [[noreturn]] void drop_group(const std::string& what) {
    const std::size_t dropped = discard_group();
    throw non_finite_error(detail::concat(
        "Trainer::step: ", what, "; the weights are those of optimizer step ", optimizer_steps_,
        " and the ", dropped, " batch(es) of this accumulation group are dropped (a learning "
        "rate too high, or bad data?)"));
  }

  static const TrainConfig& validated(const TrainConfig& config) {
    config.validate();
    return config;
  }

  Model& model_;
  TrainConfig config_;
  WarmupCosineSchedule schedule_;
  HybridOptimizer<Backend> optimizer_;
  std::size_t batches_ = 0;
  std::size_t optimizer_steps_ = 0;
};

}  // namespace ablate
