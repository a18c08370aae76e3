// SiLU and SwiGLU, element-wise, forward and backward (vectorised by Eigen's array ops).
#pragma once

#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cpu {

template <class S>
struct ActivationKernels {
  using Tensor = Matrix<S>;

  // y = x * sigmoid(x)
  static void silu_forward(Tensor& y, const Tensor& x) {
    cpu::resize(y, x.rows(), x.cols());
    y.array() = x.array() / (S(1) + (-x.array()).exp());
  }
  // dx = dy * s * (1 + x * (1 - s)),  s = sigmoid(x)
  static void silu_backward(Tensor& dx, const Tensor& dy, const Tensor& x) {
    checks::shape(dy, x.rows(), x.cols(), "silu_backward", "dy");
    // No temporaries: a fresh activation-sized buffer costs more in page faults than the math.
    cpu::resize(dx, x.rows(), x.cols());
    dx.array() = S(1) / (S(1) + (-x.array()).exp());  // s
    dx.array() = dy.array() * dx.array() * (S(1) + x.array() * (S(1) - dx.array()));
  }

  // h = silu(gate) * up
  static void swiglu_forward(Tensor& h, const Tensor& gate, const Tensor& up) {
    checks::shape(up, gate.rows(), gate.cols(), "swiglu_forward", "up");
    cpu::resize(h, gate.rows(), gate.cols());
    h.array() = gate.array() / (S(1) + (-gate.array()).exp()) * up.array();
  }
  // dgate = dh * up * silu'(gate),  dup = dh * silu(gate)
  static void swiglu_backward(Tensor& dgate, Tensor& dup, const Tensor& dh, const Tensor& gate,
                              const Tensor& up) {
    checks::shape(up, gate.rows(), gate.cols(), "swiglu_backward", "up");
    checks::shape(dh, gate.rows(), gate.cols(), "swiglu_backward", "dh");
    cpu::resize(dgate, gate.rows(), gate.cols());
    cpu::resize(dup, gate.rows(), gate.cols());
    dup.array() = S(1) / (S(1) + (-gate.array()).exp());  // s, then overwritten below
    dgate.array() = dh.array() * up.array() * dup.array() * (S(1) + gate.array() * (S(1) - dup.array()));
    dup.array() = dh.array() * gate.array() * dup.array();
  }
};

}  // namespace ablate::cpu
