// Finite-difference gradient checking in double precision.  A check perturbs every element of
// a tensor by +-eps, evaluates the scalar loss, and compares the central difference with the
// analytic gradient by the norm-wise relative error ||a - n|| / max(||a||, ||n||).
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "ablate/backend/cpu/backend.hpp"
#include "ablate/core/parameter.hpp"

namespace ablate::test {

using D = CPUBackend<double>;
using Mat = D::Tensor;

// Relative error of `analytic` against the central difference of `loss` over `value`.
inline double fd_relative_error(Mat& value, const Mat& analytic, const std::function<double()>& loss,
                                double eps = 1e-5) {
  Mat numeric(value.rows(), value.cols());
  for (Eigen::Index i = 0; i < value.size(); ++i) {
    const double saved = value.data()[i];
    value.data()[i] = saved + eps;
    const double up = loss();
    value.data()[i] = saved - eps;
    const double down = loss();
    value.data()[i] = saved;
    numeric.data()[i] = (up - down) / (2 * eps);
  }
  const double scale = std::max({analytic.norm(), numeric.norm(), 1e-12});
  return (analytic - numeric).norm() / scale;
}

// A fixed random matrix with entries in [-1, 1).
inline Mat random_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t key) {
  Mat m(rows, cols);
  D::fill_uniform(m, key, 1.0);
  return m;
}

// sum(y .* r): the scalar whose gradient with respect to y is r.
inline double dot(const Mat& y, const Mat& r) { return (y.array() * r.array()).sum(); }

}  // namespace ablate::test
