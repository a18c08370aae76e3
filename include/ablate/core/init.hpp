// Parameter initialisation.  The seed initialised every Linear and the embedding with
// normal(0, 0.02) and zero biases, except modules swapped in afterwards (the DeepSeek attention
// and MLP), which kept PyTorch's default: uniform(+-1/sqrt(fan_in)) for weights and biases.
#pragma once

#include <cmath>
#include <cstdint>

#include "ablate/core/parameter.hpp"
#include "ablate/core/random.hpp"

namespace ablate {

enum class InitScheme {
  Seed,    // as the seed runs: DeepSeek-origin modules keep PyTorch's default init
  Normal,  // every Linear normal(0, initializer_range), biases zero
};

// Which family a Linear belongs to, so the scheme can treat DeepSeek modules apart.
enum class ModuleOrigin { Skeleton, DeepSeek };

class Initializer {
 public:
  Initializer(std::uint64_t seed, double stddev, InitScheme scheme)
      : seed_(seed), stddev_(stddev), scheme_(scheme) {}

  template <class B>
  void linear_weight(Parameter<B>& p, ModuleOrigin origin) {
    if (torch_default(origin)) {
      B::fill_uniform(p.value, next_key(), 1.0 / std::sqrt(static_cast<double>(p.cols())));
    } else {
      B::fill_normal(p.value, next_key(), stddev_);
    }
  }
  template <class B>
  void linear_bias(Parameter<B>& p, std::size_t fan_in, ModuleOrigin origin) {
    if (torch_default(origin)) {
      B::fill_uniform(p.value, next_key(), 1.0 / std::sqrt(static_cast<double>(fan_in)));
    } else {
      B::set_zero(p.value);
    }
  }
  template <class B>
  void embedding(Parameter<B>& p) {
    B::fill_normal(p.value, next_key(), stddev_);
  }
  template <class B>
  void ones(Parameter<B>& p) {
    B::fill(p.value, 1.0);
  }
  template <class B>
  void zeros(Parameter<B>& p) {
    B::set_zero(p.value);
  }

 private:
  bool torch_default(ModuleOrigin origin) const {
    return scheme_ == InitScheme::Seed && origin == ModuleOrigin::DeepSeek;
  }
  std::uint64_t next_key() { return hash_combine(mix64(seed_ ^ 0x1417u), counter_++); }

  std::uint64_t seed_;
  double stddev_;
  InitScheme scheme_;
  std::uint64_t counter_ = 0;
};

}  // namespace ablate
