// Linear layers as cuBLASLt GEMMs: y = x W^T + b with W in PyTorch's [out, in] layout.  The bias
// rides in the GEMM epilogue; its gradient is a column sum.
#pragma once

#include <algorithm>

#include "ablate/backend/cuda/gemm.cuh"
#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cuda {

namespace kernels {

// db[c] += sum_r dy[r, c]: each thread owns a column and a stripe of rows, and the stripes are
// added in a fixed order (deterministic).
constexpr int kColumnSumRows = 8;
ABLATE_KERNEL void column_sum_add(float* db, const float* dy, std::ptrdiff_t rows, std::ptrdiff_t cols) {
  __shared__ float part[kColumnSumRows][kWarp];
  const std::ptrdiff_t c = blockIdx.x * static_cast<std::ptrdiff_t>(kWarp) + threadIdx.x;
  float acc = 0.f;
  if (c < cols)
    for (std::ptrdiff_t r = threadIdx.y; r < rows; r += kColumnSumRows) acc += dy[r * cols + c];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float total = 0.f;
    for (int j = 0; j < kColumnSumRows; ++j) total += part[j][threadIdx.x];
    db[c] += total;
  }
}

}  // namespace kernels

struct LinearKernels {
  using Tensor = cuda::Tensor;

  // y = x W^T (+ b).  `b` may be null.
  static void linear_forward(Tensor& y, const Tensor& x, const Tensor& w, const Tensor* b) {
    checks::linear_forward(x, w, b, "linear_forward");
    y.resize(x.rows(), w.rows());
    gemm(y.data(), x.data(), false, w.data(), true, x.rows(), w.rows(), x.cols(), 1.f, 0.f,
         b != nullptr ? b->data() : nullptr);
  }

  // dW += dy^T x, db += column sums of dy, dx = dy W (or dx += dy W when accumulate_dx).
  // dy is rounded to bf16 once for both GEMMs: for the LM head it is the [tokens, vocab]
  // logit gradient, the largest operand of the step.
  static void linear_backward(Tensor* dx, Tensor& dw, Tensor* db, const Tensor& dy,
                              const Tensor& x, const Tensor& w, bool accumulate_dx = false) {
    checks::linear_backward(dx, dw, db, dy, x, w, accumulate_dx, "linear_backward");
    if (!accumulate_dx && dx != nullptr) dx->resize(dy.rows(), w.cols());
    if (db != nullptr) column_sum_add(*db, dy);
    if (dy.numel() == 0) {  // no products: dW and an accumulated dx unchanged, a fresh dx zero
      if (!accumulate_dx && dx != nullptr) TensorKernels::set_zero(*dx);
      return;
    }
    __nv_bfloat16* dy16 = scratch<__nv_bfloat16, 2>(dy.numel());
    __nv_bfloat16* other16 = scratch<__nv_bfloat16, 3>(std::max(x.numel(), w.numel()));
    Gemm& g = Gemm::get();
    Gemm::convert(dy16, dy.data(), dy.numel());
    Gemm::convert(other16, x.data(), x.numel());
    g.run_bf16(dw.data(), dy16, true, other16, false, dy.cols(), x.cols(), dy.rows(), 1.f, 1.f, nullptr);
    if (dx != nullptr) {
      // Stream order: the dW GEMM has read x's copy before w's overwrites it.
      Gemm::convert(other16, w.data(), w.numel());
      g.run_bf16(dx->data(), dy16, false, other16, false, dy.rows(), w.cols(), dy.cols(), 1.f,
                 accumulate_dx ? 1.f : 0.f, nullptr);
    }
  }

  // Batched (batch > 1), every operand of the products below is a stack of `batch` matrices
  // along its rows (as on the CPU) and one strided batched GEMM computes them all.

  // c = a b (plain GEMM; used by optimizers).
  static void matmul(Tensor& c, const Tensor& a, const Tensor& b, std::ptrdiff_t batch = 1) {
    checks::matmul(a, b, "matmul", batch);
    c.resize(a.rows(), b.cols());
    Gemm::get().run(c.data(), a.data(), false, b.data(), false, a.rows() / batch, b.cols(),
                    a.cols(), 1.f, 0.f, nullptr, nullptr, batch);
  }
  // d = alpha a b + beta c, c shaped like a b; d must not alias a, b or c.  One GEMM: the
  // combination is its epilogue (beta C with C != D).
  static void matmul_add(Tensor& d, const Tensor& a, const Tensor& b, double alpha,
                         const Tensor& c, double beta, std::ptrdiff_t batch = 1) {
    checks::matmul(a, b, "matmul_add", batch);
    checks::shape(c, a.rows(), b.cols(), "matmul_add", "c");
    d.resize(a.rows(), b.cols());
    Gemm::get().run(d.data(), a.data(), false, b.data(), false, a.rows() / batch, b.cols(),
                    a.cols(), static_cast<float>(alpha), static_cast<float>(beta), nullptr,
                    c.data(), batch);
  }
  // c = a a^T
  static void gram(Tensor& c, const Tensor& a, std::ptrdiff_t batch = 1) {
    checks::stack(a, batch, "gram", "a");
    const std::ptrdiff_t m = a.rows() / batch;
    c.resize(a.rows(), m);
    Gemm::get().run(c.data(), a.data(), false, a.data(), true, m, m, a.cols(), 1.f, 0.f, nullptr,
                    nullptr, batch);
  }

 private:
  static void column_sum_add(Tensor& db, const Tensor& dy) {
    if (dy.cols() == 0) return;
    const dim3 block(kWarp, kernels::kColumnSumRows);
    const auto grid = static_cast<unsigned>((dy.cols() + kWarp - 1) / kWarp);
    kernels::column_sum_add<<<grid, block, 0, stream()>>>(db.data(), dy.data(), dy.rows(), dy.cols());
    ABLATE_CUDA_CHECK_LAUNCH("column_sum_add");
  }
};

}  // namespace ablate::cuda
