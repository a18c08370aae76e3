// Inverted dropout with the CPU backend's counter-based mask: element i is kept when
// uniform01(key, i) >= p, so both backends drop exactly the same elements and the backward
// regenerates the mask from the key.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/random.hpp"

namespace ablate::cuda {

namespace kernels::drop {

// x[i] = keep ? x[i] * scale : 0
ABLATE_KERNEL void dropout_apply(float* x, std::size_t n, double p, std::uint64_t key, float scale) {
  ABLATE_GRID_STRIDE(i, n) x[i] = uniform01(key, static_cast<std::uint64_t>(i)) >= p ? __fmul_rn(x[i], scale) : 0.f;
}

// TensorKernels::launch for this kernel set (see activation.cuh).
struct Elementwise : TensorKernels {
  using TensorKernels::launch;
};

}  // namespace kernels::drop

struct DropoutKernels {
  using Tensor = cuda::Tensor;

  // In place: x[i] = keep ? x[i] / (1 - p) : 0.  Applying it to dy is the backward.
  static void dropout_apply(Tensor& x, double p, std::uint64_t key) {
    if (p <= 0.0) return;
    const auto scale = static_cast<float>(1.0 / (1.0 - p));
    kernels::drop::Elementwise::launch(kernels::drop::dropout_apply, x.numel(), x.data(), x.numel(),
                                       p, key, scale);
  }
};

}  // namespace ablate::cuda
