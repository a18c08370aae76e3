// TrainConfig: every number of the training recipe, defaulting to the seed's Experiment 1.
#pragma once

#include <cmath>
#include <cstddef>

#include "ablate/core/error.hpp"
#include "ablate/train/hybrid_optimizer.hpp"

namespace ablate {

struct TrainConfig {
  std::size_t total_batches = 1500;  // Experiment 5: 1000
  std::size_t grad_accumulation = 4;  // optimizer step every this many batches; loss / this
  double grad_clip = 1.0;             // global grad-norm limit; <= 0 disables clipping

  // Schedule: warmup = schedule_total / warmup_divisor (integer division), then cosine to
  // min_lr_ratio.  Experiment 1 uses divisor 10, Experiment 5 uses 20.
  std::size_t warmup_divisor = 10;
  double min_lr_ratio = 0.1;
  // The seed lays the schedule out over total_batches but steps it once per optimizer step,
  // so it only gets 1/grad_accumulation of the way.  false: laid out over the optimizer
  // steps actually taken (total_batches / grad_accumulation).
  bool schedule_over_batches = true;

  HybridOptions optimizer;  // Muon lr 0.01 / AdamW lr 1e-3 and their settings

  // Steps the schedule is laid out over.
  std::size_t schedule_total() const {
    return schedule_over_batches ? total_batches : total_batches / grad_accumulation;
  }

  void validate() const {
    require(total_batches > 0, "TrainConfig: total_batches must be > 0");
    require(grad_accumulation > 0, "TrainConfig: grad_accumulation must be > 0");
    require(warmup_divisor > 0, "TrainConfig: warmup_divisor must be > 0");
    require(min_lr_ratio >= 0.0 && min_lr_ratio <= 1.0,
            "TrainConfig: min_lr_ratio must be in [0, 1]");
    require(!std::isnan(grad_clip), "TrainConfig: grad_clip is NaN (<= 0 or inf: no clipping)");
    // Whatever the schedule's layout, a run shorter than one accumulation group never steps.
    require(total_batches >= grad_accumulation, "TrainConfig: fewer batches (", total_batches,
            ") than one optimizer step needs (", grad_accumulation, ")");
  }
};

}  // namespace ablate
