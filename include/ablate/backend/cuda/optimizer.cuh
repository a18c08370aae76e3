// Element-wise kernels the optimizers need beyond the tensor basics: the fused AdamW step,
// torch's two-sided lerp, y = a*y + b*x and a tiled transpose.  The float operations follow
// the CPU backend's order (the _rn intrinsics keep nvcc from contracting them into FMAs), and
// the scalar coefficients are computed on the host exactly as the CPU backend computes them.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "ablate/backend/cuda/tensor.cuh"

namespace ablate::cuda {

namespace kernels::optim {

// One AdamW step in torch's order of operations (see OptimizerKernels::adamw_update).
ABLATE_KERNEL void adamw(float* p, const float* g, float* m, float* v, std::size_t n, float decay,
                         bool lerp_from_m, float w1, float one_minus_w1, float b2, float w2,
                         float step_size, float bc2_sqrt, float eps) {
  ABLATE_GRID_STRIDE(i, n) {
    const float gi = g[i];
    float mi = m[i];
    mi = lerp_from_m ? __fadd_rn(mi, __fmul_rn(w1, __fsub_rn(gi, mi)))
                     : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, mi), one_minus_w1));
    const float vi = __fadd_rn(__fmul_rn(v[i], b2), __fmul_rn(__fmul_rn(w2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2_sqrt), eps);
    p[i] = __fsub_rn(__fmul_rn(p[i], decay), __fmul_rn(step_size, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
  }
}

// out = a + w*(b - a) when |w| < 0.5, else b - (b - a)*(1 - w).  out may alias a or b.
ABLATE_KERNEL void lerp(float* out, const float* a, const float* b, std::size_t n, bool from_a,
                        float w, float one_minus_w) {
  ABLATE_GRID_STRIDE(i, n) {
    const float ai = a[i], bi = b[i], diff = __fsub_rn(bi, ai);
    out[i] = from_a ? __fadd_rn(ai, __fmul_rn(w, diff)) : __fsub_rn(bi, __fmul_rn(diff, one_minus_w));
  }
}

// dst[c, r] = src[r, c] through 32 x 32 shared-memory tiles (padded against bank conflicts);
// blocks of 32 x 8 threads, four elements per thread.  Row tiles beyond gridDim.y are looped;
// matrix z of a stack of `batch` over grid.z (also looped).
constexpr int kTile = 32, kTileRows = 8;
ABLATE_KERNEL void transpose(float* dst_stack, const float* src_stack, std::ptrdiff_t rows,
                             std::ptrdiff_t cols, std::ptrdiff_t batch) {
  __shared__ float tile[kTile][kTile + 1];
  const std::ptrdiff_t c0 = blockIdx.x * static_cast<std::ptrdiff_t>(kTile);
  const std::ptrdiff_t row_tiles = (rows + kTile - 1) / kTile;
  for (std::ptrdiff_t z = blockIdx.z; z < batch; z += gridDim.z) {
    const float* src = src_stack + z * rows * cols;
    float* dst = dst_stack + z * rows * cols;
    for (std::ptrdiff_t ty = blockIdx.y; ty < row_tiles; ty += gridDim.y) {
      const std::ptrdiff_t r0 = ty * kTile;
      // tile[j][i] = src[r0 + j, c0 + i]
      for (int j = threadIdx.y; j < kTile; j += kTileRows) {
        const std::ptrdiff_t r = r0 + j, c = c0 + threadIdx.x;
        if (r < rows && c < cols) tile[j][threadIdx.x] = src[r * cols + c];
      }
      __syncthreads();
      // dst[c0 + j, r0 + i] = src[r0 + i, c0 + j] = tile[i][j]
      for (int j = threadIdx.y; j < kTile; j += kTileRows) {
        const std::ptrdiff_t c = c0 + j, r = r0 + threadIdx.x;
        if (c < cols && r < rows) dst[c * rows + r] = tile[threadIdx.x][j];
      }
      __syncthreads();  // the tile is rewritten by the next iteration
    }
  }
}

// TensorKernels::launch for this kernel set (see activation.cuh).
struct Elementwise : TensorKernels {
  using TensorKernels::launch;
};

}  // namespace kernels::optim

struct OptimizerKernels {
  using Tensor = cuda::Tensor;

  // One step of torch.optim.AdamW on one tensor, in torch's order of operations:
  //   p *= 1 - lr*wd;  m = lerp(m, g, 1 - beta1);  v = v*beta2 + (1 - beta2)*g*g;
  //   p -= lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps).
  // `step` is the 1-based count of steps taken, this one included.  The coefficients are
  // computed in double on the host and rounded to float, as the CPU backend does.
  static void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr,
                           double beta1, double beta2, double eps, double weight_decay,
                           std::int64_t step) {
    const double t = static_cast<double>(step);
    const auto decay = static_cast<float>(1.0 - lr * weight_decay);
    const auto w1 = static_cast<float>(1.0 - beta1);
    const float one_minus_w1 = 1.f - w1;  // in float, as the CPU's S(1) - w1
    const auto b2 = static_cast<float>(beta2);
    const auto w2 = static_cast<float>(1.0 - beta2);
    const auto step_size = static_cast<float>(lr / (1.0 - std::pow(beta1, t)));
    const auto bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(beta2, t)));
    const auto e = static_cast<float>(eps);
    // torch's lerp switches formula at weight 0.5: m + w1*(g - m) for beta1 > 0.5, else
    // g - (g - m)*(1 - w1).
    kernels::optim::Elementwise::launch(kernels::optim::adamw, param.numel(), param.data(),
                                        grad.data(), m.data(), v.data(), param.numel(), decay,
                                        beta1 > 0.5, w1, one_minus_w1, b2, w2, step_size, bc2_sqrt, e);
  }

  // out = a + w*(b - a), with torch's two-sided formula so w near 1 is exact (w = 1 gives b).
  // `out` may alias `a` or `b`.
  static void lerp(Tensor& out, const Tensor& a, const Tensor& b, double w) {
    const auto ws = static_cast<float>(w);
    if (out.rows() != a.rows() || out.cols() != a.cols()) out.resize(a.rows(), a.cols());
    kernels::optim::Elementwise::launch(kernels::optim::lerp, a.numel(), out.data(), a.data(),
                                        b.data(), a.numel(), std::abs(w) < 0.5, ws, 1.f - ws);
  }
  // a = lerp(a, b, w): a momentum buffer's exponential moving average.
  static void lerp_inplace(Tensor& a, const Tensor& b, double w) { lerp(a, a, b, w); }

  // y = a*y + b*x: the linear combinations inside Newton-Schulz.
  static void scale_add(Tensor& y, double a, const Tensor& x, double b) {
    kernels::optim::Elementwise::launch(kernels::scale_add, y.numel(), y.data(), y.numel(),
                                        static_cast<float>(a), x.data(), static_cast<float>(b));
  }

  // dst = src^T (dst must not be src); batched, matrix g of the stack src [batch r, c]
  // transposed into matrix g of the stack dst [batch c, r].
  static void transpose(Tensor& dst, const Tensor& src, std::ptrdiff_t batch = 1) {
    checks::stack(src, batch, "transpose", "src");
    const std::ptrdiff_t rows = src.rows() / batch, cols = src.cols();
    dst.resize(batch * cols, rows);
    if (rows == 0 || cols == 0) return;
    using kernels::optim::kTile;
    const std::ptrdiff_t row_tiles = (rows + kTile - 1) / kTile, col_tiles = (cols + kTile - 1) / kTile;
    const dim3 grid(static_cast<unsigned>(col_tiles), static_cast<unsigned>(std::min<std::ptrdiff_t>(row_tiles, 65535)),
                    static_cast<unsigned>(std::min<std::ptrdiff_t>(batch, 65535)));
    const dim3 block(kTile, kernels::optim::kTileRows);
    kernels::optim::transpose<<<grid, block, 0, stream()>>>(dst.data(), src.data(), rows, cols, batch);
    ABLATE_CUDA_CHECK_LAUNCH("transpose");
  }
};

}  // namespace ablate::cuda
