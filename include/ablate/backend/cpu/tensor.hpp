// CPU tensors are row-major Eigen matrices: activations are [tokens, features], parameters
// are stored in PyTorch's [out, in] layout.  These are the element-wise basics every block uses.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/core/parallel.hpp"
#include "ablate/core/random.hpp"

namespace ablate::cpu {

template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class S>
struct TensorKernels {
  using Tensor = Matrix<S>;

  static void resize(Tensor& t, Eigen::Index rows, Eigen::Index cols) {
    if (t.rows() != rows || t.cols() != cols) t.resize(rows, cols);
  }
  static void set_zero(Tensor& t) { t.setZero(); }
  static void copy(Tensor& dst, const Tensor& src) { dst = src; }
  static void add_inplace(Tensor& y, const Tensor& x) { y += x; }
  static void scale_inplace(Tensor& y, double s) { y *= static_cast<S>(s); }
  // y += s * x
  static void axpy(Tensor& y, double s, const Tensor& x) { y += static_cast<S>(s) * x; }

  // dst = src[:, offset, offset + count)
  static void slice_columns(Tensor& dst, const Tensor& src, Eigen::Index offset, Eigen::Index count) {
    dst = src.middleCols(offset, count);
  }
  // dst[:, offset, offset + src.cols()) = src; dst keeps its size.
  static void write_columns(Tensor& dst, Eigen::Index offset, const Tensor& src) {
    dst.middleCols(offset, src.cols()) = src;
  }
  // dst[:, offset, offset + src.cols()) += src
  static void add_columns(Tensor& dst, Eigen::Index offset, const Tensor& src) {
    dst.middleCols(offset, src.cols()) += src;
  }

  static double sum_squares(const Tensor& t) {
    return t.template cast<double>().squaredNorm();
  }
  // The sum of sum_squares over `ts`, added in order (gradient clipping's global norm).
  static double sum_squares_all(const std::vector<const Tensor*>& ts) {
    double sum = 0.0;
    for (const Tensor* t : ts) sum += sum_squares(*t);
    return sum;
  }
  // x *= 1 / (||x||_F + eps): the normalisation before Newton-Schulz.
  static void normalize_frobenius(Tensor& x, double eps) {
    scale_inplace(x, 1.0 / (std::sqrt(sum_squares(x)) + eps));
  }

  // Fills with normal(0, stddev) drawn from the counter-based generator under `key`.
  static void fill_normal(Tensor& t, std::uint64_t key, double stddev) {
    S* p = t.data();
    const Eigen::Index n = t.size();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i)
      p[i] = static_cast<S>(stddev * standard_normal(key, static_cast<std::uint64_t>(i)));
  }
  // Fills with uniform(-bound, bound).
  static void fill_uniform(Tensor& t, std::uint64_t key, double bound) {
    S* p = t.data();
    const Eigen::Index n = t.size();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i)
      p[i] = static_cast<S>(bound * (2.0 * uniform01(key, static_cast<std::uint64_t>(i)) - 1.0));
  }
  static void fill(Tensor& t, double v) { t.setConstant(static_cast<S>(v)); }

  static std::vector<double> to_host(const Tensor& t) {
    std::vector<double> out(static_cast<std::size_t>(t.size()));
    for (Eigen::Index i = 0; i < t.size(); ++i) out[static_cast<std::size_t>(i)] = t.data()[i];
    return out;
  }
  // t = v, element for element (v holds t's size of values, row-major).
  static void from_host(Tensor& t, const std::vector<double>& v) {
    require(v.size() == static_cast<std::size_t>(t.size()), "from_host: ", v.size(),
            " values for a [", t.rows(), ", ", t.cols(), "] tensor");
    for (Eigen::Index i = 0; i < t.size(); ++i) t.data()[i] = static_cast<S>(v[static_cast<std::size_t>(i)]);
  }
};

}  // namespace ablate::cpu
