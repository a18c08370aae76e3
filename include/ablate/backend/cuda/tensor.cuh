// CUDA tensors: fp32 row-major [rows, cols] matrices in device memory, the same shapes the CPU
// backend uses (activations [tokens, features], parameters in PyTorch's [out, in] layout).
// fp32 storage keeps master weights, optimizer states, norms and softmax statistics exact;
// the GEMMs read bf16 copies (see gemm.cuh).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

#include "ablate/backend/cuda/buffer.cuh"
#include "ablate/backend/cuda/launch.cuh"
#include "ablate/core/error.hpp"
#include "ablate/core/operand_checks.hpp"
#include "ablate/core/random.hpp"

namespace ablate::cuda {

class Tensor {
 public:
  Tensor() = default;
  Tensor(std::ptrdiff_t rows, std::ptrdiff_t cols) { resize(rows, cols); }
  Tensor(const Tensor& o) { assign(o); }
  Tensor& operator=(const Tensor& o) {
    if (this != &o) assign(o);
    return *this;
  }
  // A moved-from tensor is empty ([0, 0], no storage), not a shape without memory behind it.
  Tensor(Tensor&& o) noexcept
      : buffer_(std::move(o.buffer_)), rows_(std::exchange(o.rows_, 0)), cols_(std::exchange(o.cols_, 0)) {}
  Tensor& operator=(Tensor&& o) noexcept {
    if (this != &o) {
      buffer_ = std::move(o.buffer_);
      rows_ = std::exchange(o.rows_, 0);
      cols_ = std::exchange(o.cols_, 0);
    }
    return *this;
  }

  std::ptrdiff_t rows() const { return rows_; }
  std::ptrdiff_t cols() const { return cols_; }
  std::ptrdiff_t size() const { return rows_ * cols_; }
  std::size_t numel() const { return static_cast<std::size_t>(rows_ * cols_); }
  float* data() { return buffer_.data(); }
  const float* data() const { return buffer_.data(); }

  // Contents are unspecified after a resize that changes the size (as with Eigen).
  void resize(std::ptrdiff_t rows, std::ptrdiff_t cols) {
    buffer_.reserve(static_cast<std::size_t>(rows * cols));
    rows_ = rows;
    cols_ = cols;
  }

 private:
  void assign(const Tensor& o) {
    resize(o.rows_, o.cols_);
    if (o.numel() > 0)
      ABLATE_CUDA_CHECK(cudaMemcpyAsync(data(), o.data(), o.numel() * sizeof(float),
                                        cudaMemcpyDeviceToDevice, stream()));
  }

  DeviceBuffer<float> buffer_;
  std::ptrdiff_t rows_ = 0, cols_ = 0;
};

namespace kernels {

ABLATE_KERNEL void fill(float* y, std::size_t n, float v) {
  ABLATE_GRID_STRIDE(i, n) y[i] = v;
}
// y = a*y + b*x, each product and the sum rounded as the CPU rounds them (no fused
// multiply-add, which nvcc would otherwise contract this into).
ABLATE_KERNEL void scale_add(float* y, std::size_t n, float a, const float* x, float b) {
  ABLATE_GRID_STRIDE(i, n) y[i] = __fadd_rn(__fmul_rn(a, y[i]), __fmul_rn(b, x[i]));
}
ABLATE_KERNEL void add(float* y, std::size_t n, const float* x) {
  ABLATE_GRID_STRIDE(i, n) y[i] += x[i];
}
ABLATE_KERNEL void scale(float* y, std::size_t n, float s) {
  ABLATE_GRID_STRIDE(i, n) y[i] *= s;
}
ABLATE_KERNEL void axpy(float* y, std::size_t n, float s, const float* x) {
  ABLATE_GRID_STRIDE(i, n) y[i] = __fadd_rn(y[i], __fmul_rn(s, x[i]));
}
// dst[r, dst_off + c] (+)= src[r, src_off + c] for c < count.
ABLATE_KERNEL void copy_columns(float* dst, std::ptrdiff_t dst_ld, std::ptrdiff_t dst_off,
                             const float* src, std::ptrdiff_t src_ld, std::ptrdiff_t src_off,
                             std::ptrdiff_t rows, std::ptrdiff_t count, bool accumulate) {
  const std::size_t n = static_cast<std::size_t>(rows * count);
  ABLATE_GRID_STRIDE(i, n) {
    const auto r = static_cast<std::ptrdiff_t>(i) / count, c = static_cast<std::ptrdiff_t>(i) % count;
    float& d = dst[r * dst_ld + dst_off + c];
    const float s = src[r * src_ld + src_off + c];
    d = accumulate ? d + s : s;
  }
}
ABLATE_KERNEL void fill_normal(float* y, std::size_t n, std::uint64_t key, double stddev) {
  ABLATE_GRID_STRIDE(i, n) y[i] = static_cast<float>(stddev * standard_normal(key, i));
}
ABLATE_KERNEL void fill_uniform(float* y, std::size_t n, std::uint64_t key, double bound) {
  ABLATE_GRID_STRIDE(i, n) y[i] = static_cast<float>(bound * (2.0 * uniform01(key, i) - 1.0));
}

// Deterministic sum of squares: a fixed number of blocks (independent of the GPU), each
// reducing a fixed set of elements in double, then one block adding the partials in order.
constexpr int kReduceBlocks = 256;
// Sums of squares in two passes, for one tensor of n elements or, over grid.y, for each of
// the gridDim.y matrices of n elements of a stack: partial[y][x] for block x of matrix y, then
// out[y] = the sum of matrix y's partials (one block per matrix).
ABLATE_KERNEL void sum_squares_partial(const float* x, std::size_t n, double* partial) {
  __shared__ double scratch[kWarp];
  const float* xy = x + blockIdx.y * n;
  double acc = 0;
  ABLATE_GRID_STRIDE(i, n) acc += static_cast<double>(xy[i]) * xy[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) partial[blockIdx.y * static_cast<std::size_t>(gridDim.x) + blockIdx.x] = acc;
}
ABLATE_KERNEL void sum_partials(const double* partial, int count, double* out) {
  __shared__ double scratch[kWarp];
  const double* py = partial + blockIdx.x * static_cast<std::size_t>(count);
  double acc = 0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += py[i];
  acc = block_sum(acc, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = acc;
}
// out = totals[0] + totals[1] + ... in order, as the host would add them (one thread).
ABLATE_KERNEL void sum_in_order(const double* totals, int count, double* out) {
  double acc = 0;
  for (int i = 0; i < count; ++i) acc += totals[i];
  *out = acc;
}
// y *= 1 / (sqrt(sum_sq) + eps), the factor rounded to float as scale_inplace rounds it; in a
// stack of matrices of `per` elements, element i by its matrix's sum_sq[i / per].
ABLATE_KERNEL void scale_by_inverse_norm(float* y, std::size_t n, std::size_t per,
                                         const double* sum_sq, double eps) {
  ABLATE_GRID_STRIDE(i, n) y[i] *= static_cast<float>(1.0 / (sqrt(sum_sq[i / per]) + eps));
}

}  // namespace kernels

struct TensorKernels {
  using Tensor = cuda::Tensor;

  static void resize(Tensor& t, std::ptrdiff_t rows, std::ptrdiff_t cols) { t.resize(rows, cols); }
  static void set_zero(Tensor& t) {
    if (t.numel() > 0) ABLATE_CUDA_CHECK(cudaMemsetAsync(t.data(), 0, t.numel() * sizeof(float), stream()));
  }
  static void copy(Tensor& dst, const Tensor& src) { dst = src; }
  static void add_inplace(Tensor& y, const Tensor& x) {
    checks::shape(x, y.rows(), y.cols(), "add_inplace", "x");
    launch(kernels::add, y.numel(), y.data(), y.numel(), x.data());
  }
  static void scale_inplace(Tensor& y, double s) {
    launch(kernels::scale, y.numel(), y.data(), y.numel(), static_cast<float>(s));
  }
  // y += s * x
  static void axpy(Tensor& y, double s, const Tensor& x) {
    checks::shape(x, y.rows(), y.cols(), "axpy", "x");
    launch(kernels::axpy, y.numel(), y.data(), y.numel(), static_cast<float>(s), x.data());
  }
  // y += s * x[row, row + y.rows()): one matrix of a stack into its parameter.
  static void axpy_rows(Tensor& y, double s, const Tensor& x, std::ptrdiff_t row) {
    checks::stacked_rows(x, row, y, "axpy_rows");
    launch(kernels::axpy, y.numel(), y.data(), y.numel(), static_cast<float>(s),
           x.data() + row * x.cols());
  }
  // dst[row, row + src.rows()) = src; dst keeps its size (a matrix into its stack).
  static void write_rows(Tensor& dst, std::ptrdiff_t row, const Tensor& src) {
    checks::stacked_rows(dst, row, src, "write_rows");
    if (src.numel() == 0) return;
    ABLATE_CUDA_CHECK(cudaMemcpyAsync(dst.data() + row * dst.cols(), src.data(),
                                      src.numel() * sizeof(float), cudaMemcpyDeviceToDevice, stream()));
  }

  // dst = src[:, offset, offset + count)
  static void slice_columns(Tensor& dst, const Tensor& src, std::ptrdiff_t offset, std::ptrdiff_t count) {
    checks::columns(src, offset, count, src.rows(), "slice_columns");
    dst.resize(src.rows(), count);
    copy_columns(dst, 0, src, offset, count, false);
  }
  // dst[:, offset, offset + src.cols()) = src
  static void write_columns(Tensor& dst, std::ptrdiff_t offset, const Tensor& src) {
    checks::columns(dst, offset, src.cols(), src.rows(), "write_columns");
    copy_columns(dst, offset, src, 0, src.cols(), false);
  }
  // dst[:, offset, offset + src.cols()) += src
  static void add_columns(Tensor& dst, std::ptrdiff_t offset, const Tensor& src) {
    checks::columns(dst, offset, src.cols(), src.rows(), "add_columns");
    copy_columns(dst, offset, src, 0, src.cols(), true);
  }

  static double sum_squares(const Tensor& t) {
    double* total = scratch<double, 1>(1);
    sum_squares_to_device(total, t);
    double out = 0;
    copy_to_host(&out, total, 1);
    return out;
  }
  // The sum of sum_squares over `ts`, added in order, with one read-back for all of them.
  static double sum_squares_all(const std::vector<const Tensor*>& ts) {
    if (ts.empty()) return 0.0;
    double* totals = scratch<double, 1>(ts.size() + 1);
    for (std::size_t i = 0; i < ts.size(); ++i) sum_squares_to_device(totals + i, *ts[i]);
    kernels::sum_in_order<<<1, 1, 0, stream()>>>(totals, static_cast<int>(ts.size()), totals + ts.size());
    ABLATE_CUDA_CHECK_LAUNCH("sum_in_order");
    double out = 0;
    copy_to_host(&out, totals + ts.size(), 1);
    return out;
  }
  // x *= 1 / (||x||_F + eps), the norm never leaving the device; batched, each matrix of the
  // stack by its own norm (three launches for the whole stack).
  static void normalize_frobenius(Tensor& x, double eps, std::ptrdiff_t batch = 1) {
    checks::stack(x, batch, "normalize_frobenius", "x");
    if (x.numel() == 0) return;
    const auto matrices = static_cast<std::size_t>(batch);
    const std::size_t per = x.numel() / matrices;
    double* totals = scratch<double, 1>(matrices);
    sum_squares_to_device(totals, x.data(), per, matrices);
    launch(kernels::scale_by_inverse_norm, x.numel(), x.data(), x.numel(), per, totals, eps);
  }

  // Same streams as the CPU backend: element i of the tensor is a function of (key, i).
  static void fill_normal(Tensor& t, std::uint64_t key, double stddev) {
    launch(kernels::fill_normal, t.numel(), t.data(), t.numel(), key, stddev);
  }
  static void fill_uniform(Tensor& t, std::uint64_t key, double bound) {
    launch(kernels::fill_uniform, t.numel(), t.data(), t.numel(), key, bound);
  }
  static void fill(Tensor& t, double v) {
    launch(kernels::fill, t.numel(), t.data(), t.numel(), static_cast<float>(v));
  }

  static std::vector<double> to_host(const Tensor& t) {
    std::vector<float> f(t.numel());
    copy_to_host(f.data(), t.data(), f.size());
    return {f.begin(), f.end()};
  }
  // t = v, element for element (v holds t's size of values, row-major).  Small ones (a
  // router's per-expert row, every step) go up through the pinned ring without a stream sync.
  static void from_host(Tensor& t, const std::vector<double>& v) {
    require(v.size() == t.numel(), "from_host: ", v.size(), " values for a [", t.rows(), ", ",
            t.cols(), "] tensor");
    const std::vector<float> f(v.begin(), v.end());
    if (f.size() <= kSmallUpload)
      upload<float, 37>(t.data(), f.data(), f.size());
    else
      copy_to_device(t.data(), f.data(), f.size());
  }

 protected:
  static constexpr std::size_t kSmallUpload = 1 << 14;  // floats: 64 KiB of pinned ring buffer

  // Element-wise launch over n elements (nothing to do for n == 0).
  template <class... Params, class... Args>
  static void launch(void (*kernel)(Params...), std::size_t n, Args&&... args) {
    if (n == 0) return;
    kernel<<<blocks_for(n), kThreads, 0, stream()>>>(std::forward<Args>(args)...);
    ABLATE_CUDA_CHECK_LAUNCH("element-wise kernel");
  }

 private:
  // *out = sum of squares of t, on the device (a fixed block count: deterministic).
  static void sum_squares_to_device(double* out, const Tensor& t) {
    sum_squares_to_device(out, t.data(), t.numel(), 1);
  }
  // out[g] = sum of squares of matrix g (of `per` elements) of the stack at x, g < matrices.
  static void sum_squares_to_device(double* out, const float* x, std::size_t per,
                                    std::size_t matrices) {
    require(matrices <= 65535, "sum of squares: at most 65535 matrices in a stack, got ", matrices);
    double* partial = scratch<double, 0>(kernels::kReduceBlocks * matrices);
    const dim3 grid(kernels::kReduceBlocks, static_cast<unsigned>(matrices));
    kernels::sum_squares_partial<<<grid, kThreads, 0, stream()>>>(x, per, partial);
    ABLATE_CUDA_CHECK_LAUNCH("sum_squares_partial");
    kernels::sum_partials<<<static_cast<unsigned>(matrices), kThreads, 0, stream()>>>(
        partial, kernels::kReduceBlocks, out);
    ABLATE_CUDA_CHECK_LAUNCH("sum_partials");
  }

  static void copy_columns(Tensor& dst, std::ptrdiff_t dst_off, const Tensor& src,
                           std::ptrdiff_t src_off, std::ptrdiff_t count, bool accumulate) {
    launch(kernels::copy_columns, static_cast<std::size_t>(src.rows() * count), dst.data(),
           dst.cols(), dst_off, src.data(), src.cols(), src_off, src.rows(), count, accumulate);
  }
};

}  // namespace ablate::cuda
