// Learning-rate schedule: linear warmup from 0, then cosine decay from 1 to min_ratio.
// factor(step) multiplies the base learning rates, like the lambda of a torch LambdaLR:
// the first optimizer step uses factor(0) = 0 when there is a warmup.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ablate/core/error.hpp"

namespace ablate {

class WarmupCosineSchedule {
 public:
  WarmupCosineSchedule(std::size_t total_steps, std::size_t warmup_steps,
                       double min_ratio = 0.1)
      : total_(total_steps), warmup_(warmup_steps), min_ratio_(min_ratio) {
    require(warmup_steps <= total_steps, "WarmupCosineSchedule: warmup_steps (", warmup_steps,
            ") exceeds total_steps (", total_steps, ")");
    require(min_ratio >= 0.0 && min_ratio <= 1.0,
            "WarmupCosineSchedule: min_ratio must be in [0, 1]");
  }

  // The seed's layout: warmup = total / divisor, rounded down (10 in Experiment 1, 20 in 5).
  static WarmupCosineSchedule with_divisor(std::size_t total_steps, std::size_t divisor,
                                           double min_ratio = 0.1) {
    require(divisor > 0, "WarmupCosineSchedule: warmup divisor must be > 0");
    return WarmupCosineSchedule(total_steps, total_steps / divisor, min_ratio);
  }

  double factor(std::size_t step) const {
    if (step < warmup_)
      return static_cast<double>(step) / static_cast<double>(warmup_);
    // Past the end the factor stays at min_ratio (the seed never gets there).
    const double progress =
        total_ > warmup_ ? std::min(1.0, static_cast<double>(step - warmup_) /
                                             static_cast<double>(total_ - warmup_))
                         : 1.0;
    constexpr double pi = 3.14159265358979323846;
    return min_ratio_ + (1.0 - min_ratio_) * 0.5 * (1.0 + std::cos(pi * progress));
  }

  std::size_t total_steps() const { return total_; }
  std::size_t warmup_steps() const { return warmup_; }
  double min_ratio() const { return min_ratio_; }

 private:
  std::size_t total_, warmup_;
  double min_ratio_;
};

}  // namespace ablate
