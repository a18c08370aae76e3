// RMSNorm and LayerNorm over the feature dimension, forward and backward.  One thread block
// per row; the row statistics are accumulated in double as the CPU backend does, so rstd (and
// mean) agree with it to the float rounding, and the per-element float operations follow its
// order (the _rn intrinsics keep nvcc from contracting them into FMAs).
//
// The weight (and bias) gradients are column sums over rows.  The backward runs a fixed number
// of blocks, a function of the shape only; block b takes rows b, b + G, b + 2G, ... and each of
// its threads owns the same columns in every row, so it adds dy * xhat into its own slots of a
// [G, cols] double partial buffer without atomics.  A second kernel adds the G partials of each
// column in a fixed order: the result does not depend on the GPU or on scheduling.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cuda {

namespace kernels::norm {

constexpr int kMaxThreads = 1024;
// The backward runs about this many threads in all (G = kTargetThreads / threads blocks).
constexpr std::ptrdiff_t kTargetThreads = std::ptrdiff_t{1} << 17;

// Threads per row: a multiple of 32 giving each thread about four columns.
inline int row_threads(std::ptrdiff_t cols) {
  const std::ptrdiff_t t = ((cols + 3) / 4 + kWarp - 1) / kWarp * kWarp;
  return static_cast<int>(std::clamp<std::ptrdiff_t>(t, kWarp, kMaxThreads));
}
// Blocks of the backward: never more than rows, so every block has at least one row.
inline unsigned backward_blocks(std::ptrdiff_t rows, int threads) {
  return static_cast<unsigned>(std::clamp<std::ptrdiff_t>(kTargetThreads / threads, 1, rows));
}

// y = x * rstd * w;  rstd[r] = 1 / sqrt(mean(x[r]^2) + eps)
ABLATE_KERNEL void __launch_bounds__(kMaxThreads)
    rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, std::ptrdiff_t cols, double eps) {
  __shared__ double scratch[kWarp];
  const std::ptrdiff_t r = blockIdx.x;
  const float* xr = x + r * cols;
  double ss = 0;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const double v = xr[c];
    ss += v * v;  // exact: a float squared fits in a double
  }
  ss = block_sum(ss, scratch);
  const auto inv = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(cols) + eps));
  if (threadIdx.x == 0) rstd[r] = inv;
  float* yr = y + r * cols;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = __fmul_rn(__fmul_rn(xr[c], inv), w[c]);
}

// dx = rstd * (g - xhat * mean(g * xhat)), g = dy * w, xhat = rstd * x;
// partial[b, c] = sum over the rows of block b of dy * xhat.
ABLATE_KERNEL void __launch_bounds__(kMaxThreads)
    rmsnorm_backward(float* dx, double* partial, const float* dy, const float* x, const float* w,
                     const float* rstd, std::ptrdiff_t rows, std::ptrdiff_t cols) {
  __shared__ double scratch[kWarp];
  double* pw = partial + blockIdx.x * cols;
  for (std::ptrdiff_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const bool first = r == blockIdx.x;
    const float inv = rstd[r];
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    double dot = 0;
    for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float xh = __fmul_rn(inv, xr[c]), d = dyr[c], g = __fmul_rn(d, w[c]);
      dot += static_cast<double>(g) * xh;
      const double term = __fmul_rn(d, xh);
      pw[c] = first ? term : pw[c] + term;
    }
    dot = block_sum(dot, scratch);
    const float m = __fdiv_rn(static_cast<float>(dot), static_cast<float>(cols));
    float* dxr = dx + r * cols;
    for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float xh = __fmul_rn(inv, xr[c]), g = __fmul_rn(dyr[c], w[c]);
      dxr[c] = __fmul_rn(inv, __fsub_rn(g, __fmul_rn(xh, m)));
    }
  }
}

// y = (x - mean) * rstd * w + b
ABLATE_KERNEL void __launch_bounds__(kMaxThreads)
    layernorm_forward(float* y, float* mean, float* rstd, const float* x, const float* w,
                      const float* b, std::ptrdiff_t cols, double eps) {
  __shared__ double scratch[kWarp];
  const std::ptrdiff_t r = blockIdx.x;
  const float* xr = x + r * cols;
  const auto n = static_cast<double>(cols);
  double s = 0;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) s += xr[c];
  const double mu = block_sum(s, scratch) / n;
  double q = 0;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const double d = xr[c] - mu;
    q += d * d;
  }
  const double var = block_sum(q, scratch) / n;
  const auto inv = static_cast<float>(1.0 / sqrt(var + eps));
  const auto muf = static_cast<float>(mu);
  if (threadIdx.x == 0) {
    mean[r] = muf;
    rstd[r] = inv;
  }
  float* yr = y + r * cols;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x)
    yr[c] = __fadd_rn(__fmul_rn(__fmul_rn(__fsub_rn(xr[c], muf), inv), w[c]), b[c]);
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w, xhat = (x - mean) * rstd;
// partial[b, c] = sum of dy * xhat and partial[G + b, c] = sum of dy over the rows of block b.
ABLATE_KERNEL void __launch_bounds__(kMaxThreads)
    layernorm_backward(float* dx, double* partial, const float* dy, const float* x, const float* w,
                       const float* mean, const float* rstd, std::ptrdiff_t rows, std::ptrdiff_t cols) {
  __shared__ double scratch[kWarp];
  double* pw = partial + blockIdx.x * cols;
  double* pb = partial + (gridDim.x + blockIdx.x) * static_cast<std::ptrdiff_t>(cols);
  for (std::ptrdiff_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const bool first = r == blockIdx.x;
    const float mu = mean[r], inv = rstd[r];
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    double sg = 0, sgx = 0;
    for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float xh = __fmul_rn(__fsub_rn(xr[c], mu), inv), d = dyr[c], g = __fmul_rn(d, w[c]);
      sg += g;
      sgx += static_cast<double>(g) * xh;
      const double tw = __fmul_rn(d, xh), tb = d;
      pw[c] = first ? tw : pw[c] + tw;
      pb[c] = first ? tb : pb[c] + tb;
    }
    sg = block_sum(sg, scratch);
    sgx = block_sum(sgx, scratch);
    const float gm = __fdiv_rn(static_cast<float>(sg), static_cast<float>(cols));
    const float gx = __fdiv_rn(static_cast<float>(sgx), static_cast<float>(cols));
    float* dxr = dx + r * cols;
    for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
      const float xh = __fmul_rn(__fsub_rn(xr[c], mu), inv), g = __fmul_rn(dyr[c], w[c]);
      dxr[c] = __fmul_rn(inv, __fsub_rn(__fsub_rn(g, gm), __fmul_rn(xh, gx)));
    }
  }
}

// out[c] += sum over b < count of partial[b, c], added in a fixed order: thread (x, y) of a
// 32 x 32 block sums the b = y (mod 32) stripe of column c, then row y = 0 adds the 32 stripes.
constexpr int kStripes = 32;
ABLATE_KERNEL void __launch_bounds__(kStripes * kWarp)
    add_partials(float* out, const double* partial, std::ptrdiff_t count,
                                std::ptrdiff_t cols) {
  __shared__ double part[kStripes][kWarp + 1];
  const std::ptrdiff_t c = blockIdx.x * static_cast<std::ptrdiff_t>(kWarp) + threadIdx.x;
  double acc = 0;
  if (c < cols)
    for (std::ptrdiff_t b = threadIdx.y; b < count; b += kStripes) acc += partial[b * cols + c];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double total = 0;
    for (int j = 0; j < kStripes; ++j) total += part[j][threadIdx.x];
    out[c] += static_cast<float>(total);
  }
}

}  // namespace kernels::norm

struct NormKernels {
  using Tensor = cuda::Tensor;

  // y = x / rms(x) * w;  rstd[r] = 1 / sqrt(mean(x[r]^2) + eps)
  static void rmsnorm_forward(Tensor& y, Tensor& rstd, const Tensor& x, const Tensor& w, double eps) {
    checks::norm_parameters(x, w, "rmsnorm_forward");
    const std::ptrdiff_t n = x.rows(), d = x.cols();
    y.resize(n, d);
    rstd.resize(n, 1);
    if (n == 0) return;
    kernels::norm::rmsnorm_forward<<<static_cast<unsigned>(n), kernels::norm::row_threads(d), 0, stream()>>>(
        y.data(), rstd.data(), x.data(), w.data(), d, eps);
    ABLATE_CUDA_CHECK_LAUNCH("rmsnorm_forward");
  }

  // dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w;  dw += sum_r dy * xhat
  static void rmsnorm_backward(Tensor& dx, Tensor& dw, const Tensor& dy, const Tensor& x,
                               const Tensor& w, const Tensor& rstd) {
    checks::norm_backward(dy, x, w, dw, rstd, "rmsnorm_backward");
    const std::ptrdiff_t n = x.rows(), d = x.cols();
    dx.resize(n, d);
    if (n == 0 || d == 0) return;
    const int threads = kernels::norm::row_threads(d);
    const unsigned blocks = kernels::norm::backward_blocks(n, threads);
    double* partial = scratch<double, 30>(static_cast<std::size_t>(blocks) * static_cast<std::size_t>(d));
    kernels::norm::rmsnorm_backward<<<blocks, threads, 0, stream()>>>(
        dx.data(), partial, dy.data(), x.data(), w.data(), rstd.data(), n, d);
    ABLATE_CUDA_CHECK_LAUNCH("rmsnorm_backward");
    add_partials(dw, partial, blocks, d);
  }

  // y = (x - mean) * rstd * w + b
  static void layernorm_forward(Tensor& y, Tensor& mean, Tensor& rstd, const Tensor& x,
                                const Tensor& w, const Tensor& b, double eps) {
    checks::norm_parameters(x, w, "layernorm_forward");
    checks::norm_parameters(x, b, "layernorm_forward");
    const std::ptrdiff_t n = x.rows(), d = x.cols();
    y.resize(n, d);
    mean.resize(n, 1);
    rstd.resize(n, 1);
    if (n == 0) return;
    kernels::norm::layernorm_forward<<<static_cast<unsigned>(n), kernels::norm::row_threads(d), 0, stream()>>>(
        y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), d, eps);
    ABLATE_CUDA_CHECK_LAUNCH("layernorm_forward");
  }

  // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * w
  static void layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dy,
                                 const Tensor& x, const Tensor& w, const Tensor& mean,
                                 const Tensor& rstd) {
    checks::layernorm_backward(dy, x, w, dw, db, mean, rstd, "layernorm_backward");
    const std::ptrdiff_t n = x.rows(), d = x.cols();
    dx.resize(n, d);
    if (n == 0 || d == 0) return;
    const int threads = kernels::norm::row_threads(d);
    const unsigned blocks = kernels::norm::backward_blocks(n, threads);
    const std::size_t part = static_cast<std::size_t>(blocks) * static_cast<std::size_t>(d);
    double* partial = scratch<double, 30>(2 * part);
    kernels::norm::layernorm_backward<<<blocks, threads, 0, stream()>>>(
        dx.data(), partial, dy.data(), x.data(), w.data(), mean.data(), rstd.data(), n, d);
    ABLATE_CUDA_CHECK_LAUNCH("layernorm_backward");
    add_partials(dw, partial, blocks, d);
    add_partials(db, partial + part, blocks, d);
  }

 private:
  // out[0, c] += sum of the `count` rows of partial (a [count, cols] double matrix).
  static void add_partials(Tensor& out, const double* partial, unsigned count, std::ptrdiff_t cols) {
    const dim3 block(kWarp, kernels::norm::kStripes);
    const auto grid = static_cast<unsigned>((cols + kWarp - 1) / kWarp);
    kernels::norm::add_partials<<<grid, block, 0, stream()>>>(out.data(), partial, count, cols);
    ABLATE_CUDA_CHECK_LAUNCH("norm add_partials");
  }
};

}  // namespace ablate::cuda
