// CPU tensors are row-major Eigen matrices: activations are [tokens, features], parameters
// are stored in PyTorch's [out, in] layout.  These are the element-wise basics every block uses.
#pragma once

#include <Eigen/Core>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/core/operand_checks.hpp"
#include "ablate/core/parallel.hpp"
#include "ablate/core/random.hpp"

namespace ablate::cpu {

template <class S>
using Matrix = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Stacks: `batch` matrices of one shape along the rows of one tensor, matrix g in rows
// [g r, (g + 1) r).  Newton-Schulz orthogonalises all of an optimizer's same-shape matrices
// as one stack (one batched GEMM each on the GPU).  On the CPU each matrix goes through a
// contiguous copy, so a batched kernel computes bit for bit what `batch` single calls compute.

// Matrix g of the stack x, as a contiguous copy.
template <class S>
Matrix<S> stacked_matrix(const Matrix<S>& x, Eigen::Index g, Eigen::Index batch) {
  const Eigen::Index r = x.rows() / batch;
  return x.middleRows(g * r, r);
}
// Matrix g of the stack `out` (already sized) = f(result, matrix g of the stack a, g).
template <class S, class F>
void for_each_stacked(Matrix<S>& out, const Matrix<S>& a, Eigen::Index batch, F&& f) {
  const Eigen::Index r = out.rows() / batch;
  Matrix<S> result;
  for (Eigen::Index g = 0; g < batch; ++g) {
    f(result, stacked_matrix(a, g, batch), g);
    out.middleRows(g * r, r) = result;
  }
}

// t becomes rows x cols (its values unspecified) and stays a valid tensor when the memory runs
// out: Eigen's resize frees the old buffer before it allocates the new one, so a bad_alloc there
// would leave t pointing at freed memory, for its next use and its destructor to free again.
// Every CPU kernel sizes its outputs and scratch buffers through this, and assigns to them
// only at their size.
template <class Derived>
void resize(Eigen::PlainObjectBase<Derived>& t, Eigen::Index rows, Eigen::Index cols) {
  if (t.rows() == rows && t.cols() == cols) return;
  if (t.size() != rows * cols) t.derived() = Derived();  // freed: a failed allocation leaves it empty
  t.resize(rows, cols);
}

template <class S>
struct TensorKernels {
  using Tensor = Matrix<S>;

  static void resize(Tensor& t, Eigen::Index rows, Eigen::Index cols) { cpu::resize(t, rows, cols); }
  static void set_zero(Tensor& t) { t.setZero(); }
  static void copy(Tensor& dst, const Tensor& src) {
    cpu::resize(dst, src.rows(), src.cols());
    dst = src;
  }
  static void add_inplace(Tensor& y, const Tensor& x) {
    checks::shape(x, y.rows(), y.cols(), "add_inplace", "x");
    y += x;
  }
  static void scale_inplace(Tensor& y, double s) { y *= static_cast<S>(s); }
  // y += s * x
  static void axpy(Tensor& y, double s, const Tensor& x) {
    checks::shape(x, y.rows(), y.cols(), "axpy", "x");
    y += static_cast<S>(s) * x;
  }
  // y += s * x[row, row + y.rows()): one matrix of a stack into its parameter.
  static void axpy_rows(Tensor& y, double s, const Tensor& x, Eigen::Index row) {
    checks::stacked_rows(x, row, y, "axpy_rows");
    y += static_cast<S>(s) * x.middleRows(row, y.rows());
  }
  // dst[row, row + src.rows()) = src; dst keeps its size (a matrix into its stack).
  static void write_rows(Tensor& dst, Eigen::Index row, const Tensor& src) {
    checks::stacked_rows(dst, row, src, "write_rows");
    dst.middleRows(row, src.rows()) = src;
  }

  // dst = src[:, offset, offset + count)
  static void slice_columns(Tensor& dst, const Tensor& src, Eigen::Index offset, Eigen::Index count) {
    checks::columns(src, offset, count, src.rows(), "slice_columns");
    cpu::resize(dst, src.rows(), count);
    dst = src.middleCols(offset, count);
  }
  // dst[:, offset, offset + src.cols()) = src; dst keeps its size.
  static void write_columns(Tensor& dst, Eigen::Index offset, const Tensor& src) {
    checks::columns(dst, offset, src.cols(), src.rows(), "write_columns");
    dst.middleCols(offset, src.cols()) = src;
  }
  // dst[:, offset, offset + src.cols()) += src
  static void add_columns(Tensor& dst, Eigen::Index offset, const Tensor& src) {
    checks::columns(dst, offset, src.cols(), src.rows(), "add_columns");
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
  // x *= 1 / (||x||_F + eps): the normalisation before Newton-Schulz; batched, each matrix of
  // the stack by its own norm.
  static void normalize_frobenius(Tensor& x, double eps, Eigen::Index batch = 1) {
    checks::stack(x, batch, "normalize_frobenius", "x");
    if (batch == 1) {
      scale_inplace(x, 1.0 / (std::sqrt(sum_squares(x)) + eps));
      return;
    }
    for_each_stacked(x, x, batch, [&](Tensor& out, const Tensor& xg, Eigen::Index) {
      out = xg;
      normalize_frobenius(out, eps);
    });
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
