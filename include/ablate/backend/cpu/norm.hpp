// RMSNorm and LayerNorm over the feature dimension, forward and backward.  The forward keeps
// one reciprocal standard deviation (and mean, for LayerNorm) per row for the backward.
#pragma once

#include <cmath>

#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cpu {

template <class S>
struct NormKernels {
  using Tensor = Matrix<S>;

  // y = x / rms(x) * w;  rstd[r] = 1 / sqrt(mean(x[r]^2) + eps)
  static void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w,
                              double eps) {
    checks::norm_parameters(x, w, "rmsnorm_forward");
    const Eigen::Index n = x.rows(), d = x.cols();
    cpu::resize(y, n, d);
    cpu::resize(rstd, n, 1);
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) {
      const double ms = x.row(r).template cast<double>().squaredNorm() / static_cast<double>(d);
      const S inv = static_cast<S>(1.0 / std::sqrt(ms + eps));
      rstd(r, 0) = inv;
      y.row(r) = (x.row(r) * inv).cwiseProduct(w.row(0));
    }
  }

  // dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w;  dw += sum_r dy * xhat
  static void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                               const Tensor& w, const Tensor& rstd) {
    checks::norm_backward(dy, x, w, dw, rstd, "rmsnorm_backward");
    const Eigen::Index n = x.rows(), d = x.cols();
    // dx first holds xhat (no temporary buffer), then is overwritten row by row.
    cpu::resize(dx, n, d);
    dx = rstd.col(0).asDiagonal() * x;
    dw.row(0) += dy.cwiseProduct(dx).colwise().sum();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) {
      const auto g = dy.row(r).cwiseProduct(w.row(0));
      const S m = g.dot(dx.row(r)) / static_cast<S>(d);
      dx.row(r) = rstd(r, 0) * (g - dx.row(r) * m);
    }
  }

  // y = (x - mean) * rstd * w + b
  static void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x,
                                const Tensor& w, const Tensor& b, double eps) {
    checks::norm_parameters(x, w, "layernorm_forward");
    checks::norm_parameters(x, b, "layernorm_forward");
    const Eigen::Index n = x.rows(), d = x.cols();
    cpu::resize(y, n, d);
    cpu::resize(mean, n, 1);
    cpu::resize(rstd, n, 1);
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) {
      const auto xr = x.row(r).template cast<double>();
      const double mu = xr.mean();
      const double var = (xr.array() - mu).square().mean();
      const S inv = static_cast<S>(1.0 / std::sqrt(var + eps));
      mean(r, 0) = static_cast<S>(mu);
      rstd(r, 0) = inv;
      y.row(r) = ((x.row(r).array() - static_cast<S>(mu)) * inv).matrix().cwiseProduct(w.row(0)) +
                 b.row(0);
    }
  }

  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w
  static void layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                 const Tensor& x, const Tensor& w, const Tensor& mean,
                                 const Tensor& rstd) {
    checks::layernorm_backward(dy, x, w, dw, db, mean, rstd, "layernorm_backward");
    const Eigen::Index n = x.rows(), d = x.cols();
    // dx first holds xhat (no temporary buffer), then is overwritten row by row.
    cpu::resize(dx, n, d);
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) dx.row(r) = (x.row(r).array() - mean(r, 0)).matrix() * rstd(r, 0);
    dw.row(0) += dy.cwiseProduct(dx).colwise().sum();
    db.row(0) += dy.colwise().sum();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) {
      const auto g = dy.row(r).cwiseProduct(w.row(0));
      const S gm = g.sum() / static_cast<S>(d);
      const S gx = g.dot(dx.row(r)) / static_cast<S>(d);
      dx.row(r) = rstd(r, 0) * ((g.array() - gm).matrix() - dx.row(r) * gx);
    }
  }
};

}  // namespace ablate::cpu
