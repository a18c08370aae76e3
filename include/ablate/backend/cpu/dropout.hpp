// Inverted dropout with a counter-based mask: element i is kept when uniform(key, i) >= p, so
// the backward regenerates the mask from the key instead of storing it.
#pragma once

#include <cstdint>

#include "ablate/backend/cpu/tensor.hpp"

namespace ablate::cpu {

template <class S>
struct DropoutKernels {
  using Tensor = Matrix<S>;

  // In place: x[i] = keep ? x[i] / (1 - p) : 0.  Applying it to dy is the backward.
  static void dropout_apply(Tensor& x, double p, std::uint64_t key) {
    if (p <= 0.0) return;
    const S scale = static_cast<S>(1.0 / (1.0 - p));
    S* data = x.data();
    const Eigen::Index n = x.size();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i)
      data[i] = uniform01(key, static_cast<std::uint64_t>(i)) >= p ? data[i] * scale : S(0);
  }
};

}  // namespace ablate::cpu
