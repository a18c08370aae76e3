// Linear layers as GEMMs: y = x W^T + b with W in PyTorch's [out, in] layout.
#pragma once

#include "ablate/backend/cpu/optimizer.hpp"
#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cpu {

template <class S>
struct LinearKernels {
  using Tensor = Matrix<S>;

  // y = x W^T (+ b).  `b` may be null.
  static void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
    checks::linear_forward(x, w, b, "linear_forward");
    cpu::resize(y, x.rows(), w.rows());
    y.noalias() = x * w.transpose();
    if (b != nullptr) y.rowwise() += b->row(0);
  }

  // dW += dy^T x, db += sum over rows of dy, and dx = dy W (or dx += dy W when
  // accumulate_dx).  `dx` and `db` may be null.
  static void linear_backward(Tensor* dx, Tensor& dw, Tensor* db, const Tensor& dy,
                              const Tensor& x, const Tensor& w, bool accumulate_dx = false) {
    checks::linear_backward(dx, dw, db, dy, x, w, accumulate_dx, "linear_backward");
    dw.noalias() += dy.transpose() * x;
    if (db != nullptr) db->row(0) += dy.colwise().sum();
    if (dx != nullptr) {
      if (accumulate_dx) {
        dx->noalias() += dy * w;
      } else {
        cpu::resize(*dx, dy.rows(), w.cols());
        dx->noalias() = dy * w;
      }
    }
  }

  // Batched (batch > 1), every operand of the products below is a stack (cpu/tensor.hpp) and
  // matrix g of the result is the product of the operands' matrices g.

  // c = a b (plain GEMM; used by optimizers).
  static void matmul(Tensor& c, const Tensor& a, const Tensor& b, Eigen::Index batch = 1) {
    checks::matmul(a, b, "matmul", batch);
    cpu::resize(c, a.rows(), b.cols());
    if (batch == 1) {
      c.noalias() = a * b;
      return;
    }
    for_each_stacked(c, a, batch, [&](Tensor& cg, const Tensor& ag, Eigen::Index g) {
      matmul(cg, ag, stacked_matrix(b, g, batch));
    });
  }
  // d = alpha a b + beta c, c shaped like a b; d must not alias a, b or c.  Exactly matmul then
  // scale_add(d, alpha, c, beta), rounding for rounding (the CUDA backend does the combination
  // in its GEMM's epilogue).
  static void matmul_add(Tensor& d, const Tensor& a, const Tensor& b, double alpha,
                         const Tensor& c, double beta, Eigen::Index batch = 1) {
    checks::matmul(a, b, "matmul_add", batch);
    checks::shape(c, a.rows(), b.cols(), "matmul_add", "c");
    cpu::resize(d, a.rows(), b.cols());
    if (batch == 1) {
      d.noalias() = a * b;
      OptimizerKernels<S>::scale_add(d, alpha, c, beta);
      return;
    }
    for_each_stacked(d, a, batch, [&](Tensor& dg, const Tensor& ag, Eigen::Index g) {
      matmul_add(dg, ag, stacked_matrix(b, g, batch), alpha, stacked_matrix(c, g, batch), beta);
    });
  }
  // c = a a^T
  static void gram(Tensor& c, const Tensor& a, Eigen::Index batch = 1) {
    checks::stack(a, batch, "gram", "a");
    const Eigen::Index m = a.rows() / batch;
    cpu::resize(c, a.rows(), m);
    if (batch == 1) {
      c.noalias() = a * a.transpose();
      return;
    }
    for_each_stacked(c, a, batch, [&](Tensor& cg, const Tensor& ag, Eigen::Index) { gram(cg, ag); });
  }
};

}  // namespace ablate::cpu
