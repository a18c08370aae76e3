// The warmup + cosine learning-rate factor, seed layout included.
#include <doctest/doctest.h>

#include "ablate/train/schedule.hpp"

TEST_CASE("train: schedule warms up linearly then decays by cosine to min_ratio") {
  // Experiment 1: 1500 batches, warmup 1500 / 10 = 150.
  const auto s = ablate::WarmupCosineSchedule::with_divisor(1500, 10);
  CHECK(s.warmup_steps() == 150);
  CHECK(s.factor(0) == 0.0);  // LambdaLR: the first optimizer step has lr 0
  CHECK(s.factor(75) == doctest::Approx(0.5));
  CHECK(s.factor(150) == doctest::Approx(1.0));
  CHECK(s.factor(150 + 675) == doctest::Approx(0.55));  // halfway: 0.1 + 0.9 * 0.5
  CHECK(s.factor(1500) == doctest::Approx(0.1));
  CHECK(s.factor(5000) == doctest::Approx(0.1));  // stays at the floor past the end

  // The seed steps it once per optimizer step: 375 steps end early in the decay.
  const double last = s.factor(374);
  CHECK(last > 0.9);
  CHECK(last < 1.0);
}

TEST_CASE("train: schedule layouts and guards") {
  CHECK(ablate::WarmupCosineSchedule::with_divisor(1000, 20).warmup_steps() == 50);
  CHECK(ablate::WarmupCosineSchedule::with_divisor(15, 10).warmup_steps() == 1);

  // No warmup: the first step already has the full rate.
  const ablate::WarmupCosineSchedule none(100, 0);
  CHECK(none.factor(0) == 1.0);
  CHECK(none.factor(100) == doctest::Approx(0.1));

  const ablate::WarmupCosineSchedule floor0(10, 2, 0.0);
  CHECK(floor0.factor(10) == doctest::Approx(0.0));

  // Warmup covering everything: the end is the floor, not a division by zero.
  const ablate::WarmupCosineSchedule all(4, 4);
  CHECK(all.factor(3) == doctest::Approx(0.75));
  CHECK(all.factor(4) == doctest::Approx(0.1));

  CHECK_THROWS_AS(ablate::WarmupCosineSchedule(10, 11), ablate::invalid_input);
  CHECK_THROWS_AS(ablate::WarmupCosineSchedule::with_divisor(10, 0), ablate::invalid_input);
}
