// SiLU and SwiGLU, element-wise, forward and backward: one fused kernel each, in the CPU
// backend's order of float operations (the _rn intrinsics keep nvcc from contracting them into
// FMAs; only expf differs from Eigen's exp, by an ulp or two).
#pragma once

#include <cstddef>

#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cuda {

namespace kernels::act {

// sigmoid(v) = 1 / (1 + exp(-v))
__device__ inline float sigmoid(float v) { return __fdiv_rn(1.f, __fadd_rn(1.f, expf(-v))); }

// y = x / (1 + exp(-x))
ABLATE_KERNEL void silu_forward(float* y, const float* x, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) {
    const float v = x[i];
    y[i] = __fdiv_rn(v, __fadd_rn(1.f, expf(-v)));
  }
}
// dx = dy * s * (1 + x * (1 - s))
ABLATE_KERNEL void silu_backward(float* dx, const float* dy, const float* x, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) {
    const float v = x[i], s = sigmoid(v);
    dx[i] = __fmul_rn(__fmul_rn(dy[i], s), __fadd_rn(1.f, __fmul_rn(v, __fsub_rn(1.f, s))));
  }
}
// h = gate / (1 + exp(-gate)) * up
ABLATE_KERNEL void swiglu_forward(float* h, const float* gate, const float* up, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) {
    const float g = gate[i];
    h[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.f, expf(-g))), up[i]);
  }
}
// dgate = dh * up * s * (1 + gate * (1 - s)),  dup = dh * gate * s
ABLATE_KERNEL void swiglu_backward(float* dgate, float* dup, const float* dh, const float* gate,
                                   const float* up, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) {
    const float d = dh[i], g = gate[i], u = up[i], s = sigmoid(g);
    dgate[i] = __fmul_rn(__fmul_rn(__fmul_rn(d, u), s), __fadd_rn(1.f, __fmul_rn(g, __fsub_rn(1.f, s))));
    dup[i] = __fmul_rn(__fmul_rn(d, g), s);
  }
}

// TensorKernels::launch for these kernel sets (inheriting TensorKernels would make it an
// ambiguous base of CUDABackend).
struct Elementwise : TensorKernels {
  using TensorKernels::launch;
};

}  // namespace kernels::act

struct ActivationKernels {
  using Tensor = cuda::Tensor;

  // y = x * sigmoid(x)
  static void silu_forward(Tensor& y, const Tensor& x) {
    y.resize(x.rows(), x.cols());
    kernels::act::Elementwise::launch(kernels::act::silu_forward, x.numel(), y.data(), x.data(),
                                      x.numel());
  }
  // dx = dy * s * (1 + x * (1 - s)),  s = sigmoid(x)
  static void silu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
    checks::shape(dy, x.rows(), x.cols(), "silu_backward", "dy");
    dx.resize(x.rows(), x.cols());
    kernels::act::Elementwise::launch(kernels::act::silu_backward, x.numel(), dx.data(), dy.data(),
                                      x.data(), x.numel());
  }

  // h = silu(gate) * up
  static void swiglu_forward(Tensor& h, const Tensor& gate, const Tensor& up) {
    checks::shape(up, gate.rows(), gate.cols(), "swiglu_forward", "up");
    h.resize(gate.rows(), gate.cols());
    kernels::act::Elementwise::launch(kernels::act::swiglu_forward, gate.numel(), h.data(),
                                      gate.data(), up.data(), gate.numel());
  }
  // dgate = dh * up * silu'(gate),  dup = dh * silu(gate)
  static void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dh, const Tensor& gate,
                              const Tensor& up) {
    checks::shape(up, gate.rows(), gate.cols(), "swiglu_backward", "up");
    checks::shape(dh, gate.rows(), gate.cols(), "swiglu_backward", "dh");
    dgate.resize(gate.rows(), gate.cols());
    dup.resize(gate.rows(), gate.cols());
    kernels::act::Elementwise::launch(kernels::act::swiglu_backward, gate.numel(), dgate.data(),
                                      dup.data(), dh.data(), gate.data(), up.data(), gate.numel());
  }
};

}  // namespace ablate::cuda
