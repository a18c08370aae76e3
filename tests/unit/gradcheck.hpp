// Finite-difference gradient checking in double precision.  A check perturbs every element of
// a tensor by +-eps, evaluates the scalar loss, and compares the central difference with the
// analytic gradient by the norm-wise relative error ||a - n|| / max(||a||, ||n||).
#pragma once

#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <functional>
#include <string>

#include "ablate/backend/cpu/backend.hpp"
#include "ablate/core/context.hpp"
#include "ablate/core/parameter.hpp"

namespace ablate::test {

using D = CPUBackend<double>;
using Mat = D::Tensor;

// The bound every analytic gradient must meet.
constexpr double kTolerance = 1e-6;

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

// Checks the analytic gradients against central differences of `loss`: dx of the input x, and
// every parameter's .grad in `store` (filled by one forward and backward before the call).
inline void check_gradients(Mat& x, const Mat& dx, ParameterStore<D>& store,
                            const std::function<double()>& loss, double tolerance = kTolerance) {
  const double input_error = fd_relative_error(x, dx, loss);
  INFO("input gradient relative error " << input_error);
  CHECK(input_error < tolerance);
  for (auto& p : store) {
    const double error = fd_relative_error(p.value, p.grad, loss);
    INFO(p.name << " relative error " << error);
    CHECK(error < tolerance);
  }
}

// Runs block.forward on x and returns sum(y .* r), with the same dropout masks every time.
template <class Block>
double block_loss(Block& block, const Mat& x, const Mat& r, std::size_t batch, std::size_t seq,
                  bool training) {
  RandomStream rng(1234);
  PassContext ctx;
  ctx.training = training;
  ctx.batch = batch;
  ctx.seq = seq;
  ctx.rng = &rng;
  Mat y;
  if constexpr (requires { block.forward(y, x, ctx); }) {
    block.forward(y, x, ctx);
  } else {
    block.forward(y, x);
  }
  return test::dot(y, r);
}

// Checks d/dx and d/dparam of block against finite differences.  Parameters are first set to
// random values so that ones/zeros initialisations do not hide mistakes.
template <class Block>
void check_block(Block& block, ParameterStore<D>& store, std::size_t batch, std::size_t seq,
                 std::size_t in_dim, bool training = true) {
  std::uint64_t key = 77;
  for (auto& p : store) D::fill_uniform(p.value, key++, 0.5);
  Mat x = test::random_matrix(static_cast<Eigen::Index>(batch * seq), static_cast<Eigen::Index>(in_dim), 5);
  // The output width is learnt from one forward.
  RandomStream probe_rng(1);
  Mat r;
  {
    PassContext ctx{training, batch, seq, &probe_rng, 1.0};
    Mat y;
    if constexpr (requires { block.forward(y, x, ctx); }) block.forward(y, x, ctx);
    else block.forward(y, x);
    r = test::random_matrix(y.rows(), y.cols(), 9);
  }
  auto loss = [&] { return block_loss(block, x, r, batch, seq, training); };

  store.zero_grad();
  loss();
  Mat dx;
  block.backward(dx, r);
  check_gradients(x, dx, store, loss);
}


}  // namespace ablate::test
