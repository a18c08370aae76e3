// Softmax cross-entropy over the vocabulary, fused with its gradient: one thread block per row
// reads the logits once for the max, the sum of exponentials (online, in fp32 per thread, the
// partial sums combined in double) and the argmax, then once more to write
// dlogits = grad_scale * (softmax - onehot).  The per-row losses and hits are added on the
// device in a fixed order and the sums come back in one copy.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/loss_stats.hpp"
#include "ablate/core/tokens.hpp"

namespace ablate::cuda {

namespace kernels::xent {

constexpr int kMaxThreads = 1024;

// Threads per row: a multiple of 32 giving each thread about eight logits.
inline int row_threads(std::ptrdiff_t cols) {
  const std::ptrdiff_t t = ((cols + 7) / 8 + kWarp - 1) / kWarp * kWarp;
  return static_cast<int>(std::clamp<std::ptrdiff_t>(t, kWarp, kMaxThreads));
}

// Minimum over the block (blockDim.x a multiple of 32); every thread gets it.  `scratch` holds
// 32 values of shared memory.
__device__ inline long long block_min(long long v, long long* scratch) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  const int warps = blockDim.x / kWarp;
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const long long u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u < v ? u : v;
  }
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < warps ? scratch[lane] : LLONG_MAX;
  for (int o = kWarp / 2; o > 0; o /= 2) {
    const long long u = __shfl_xor_sync(0xffffffffu, v, o);
    v = u < v ? u : v;
  }
  return v;
}

// Row r = blockIdx.x: row_loss[r] = logsumexp(z) - z[t], row_hit[r] = 1 when the first maximum
// of z is at t (else 0), and, when dlogits is not null, dlogits[r] = grad_scale *
// (exp(z - logsumexp(z)) - onehot(t)), formed as the CPU forms it: exp(z - max) times
// grad_scale / sum, so that large logits lose no accuracy to a rounded logsumexp.  The host
// has checked the targets; one outside [0, cols) would still give a NaN loss, no hit and no
// one-hot term, not an out-of-bounds read.
ABLATE_KERNEL void __launch_bounds__(kMaxThreads)
    rows(const float* logits, const std::int32_t* targets, std::ptrdiff_t cols, float* dlogits,
         double grad_scale, double* row_loss, double* row_hit) {
  __shared__ float fscratch[kWarp];
  __shared__ double dscratch[kWarp];
  __shared__ long long iscratch[kWarp];
  const std::ptrdiff_t r = blockIdx.x;
  const float* z = logits + r * cols;
  const std::int32_t t = targets[r];
  const bool valid = t >= 0 && t < cols;
  // Read before the reductions' barriers, so dlogits may alias logits.
  const float zt = threadIdx.x == 0 && valid ? z[t] : 0.f;

  // Online max and sum of exp(z - max) over this thread's logits; `arg` is the first index of
  // the thread's maximum (the indices are visited in increasing order), its first index when
  // all its logits are -inf (so an all -inf row's first maximum is 0, as on the CPU).
  // A NaN logit makes the thread's part NaN, so the row's loss and gradient are NaN as on the
  // CPU (a diverged run must not report a finite loss).
  float m = -INFINITY, s = 0.f;
  long long arg = static_cast<std::ptrdiff_t>(threadIdx.x) < cols ? threadIdx.x : LLONG_MAX;
  bool saw_nan = false;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float v = z[c];
    saw_nan = saw_nan || v != v;
    if (v > m) {
      s *= expf(m - v);  // 0 while m is still -inf
      m = v;
      arg = c;
    }
    if (m > -INFINITY) s += expf(v - m);
  }
  const float mx = block_max(m, fscratch);
  const double part =
      saw_nan ? static_cast<double>(NAN)
          : (m == -INFINITY ? 0.0
                            : static_cast<double>(s) *
                                  exp(static_cast<double>(m) - static_cast<double>(mx)));
  const double sum = block_sum(part, dscratch);
  const double log_sum = log(sum) + static_cast<double>(mx);
  // The first maximum of the row: the lowest index among the threads that hold the maximum.
  const long long first = block_min(m == mx ? arg : LLONG_MAX, iscratch);
  if (threadIdx.x == 0) {
    row_loss[r] = valid ? log_sum - static_cast<double>(zt) : static_cast<double>(NAN);
    row_hit[r] = valid && first == t ? 1.0 : 0.0;
  }
  if (dlogits == nullptr) return;
  const auto row_scale = static_cast<float>(grad_scale / sum);
  const auto target_scale = static_cast<float>(grad_scale);
  float* g = dlogits + r * cols;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = __fmul_rn(expf(__fsub_rn(z[c], mx)), row_scale);
    if (c == t) v = __fsub_rn(v, target_scale);
    g[c] = v;
  }
}

// out[0] = sum of row_loss[0, n), out[1] = sum of row_hit[0, n): one block, fixed order.
ABLATE_KERNEL void __launch_bounds__(kThreads)
    sum_rows(const double* row_loss, const double* row_hit, std::ptrdiff_t n, double* out) {
  __shared__ double scratch[kWarp];
  double loss = 0, hits = 0;
  for (std::ptrdiff_t i = threadIdx.x; i < n; i += blockDim.x) {
    loss += row_loss[i];
    hits += row_hit[i];
  }
  loss = block_sum(loss, scratch);
  hits = block_sum(hits, scratch);
  if (threadIdx.x == 0) {
    out[0] = loss;
    out[1] = hits;
  }
}

}  // namespace kernels::xent

struct CrossEntropyKernels {
  using Tensor = cuda::Tensor;

  // dlogits (if not null) = grad_scale * (softmax(logits) - onehot(target)).  `targets` is a
  // host array of logits.rows() ids; one outside [0, cols) throws.  A NaN logit makes its
  // row's loss and gradient NaN.
  static LossSums cross_entropy(const Tensor& logits, const std::int32_t* targets, Tensor* dlogits,
                                double grad_scale) {
    const std::ptrdiff_t n = logits.rows(), v = logits.cols();
    check_ids(targets, static_cast<std::size_t>(n), static_cast<std::size_t>(v),
              "ablate::CUDA cross_entropy: target id");
    if (dlogits != nullptr) dlogits->resize(n, v);
    LossSums out;
    out.count = static_cast<std::size_t>(n);
    if (n == 0) return out;
    const auto rows = static_cast<std::size_t>(n);
    std::int32_t* device_targets = scratch<std::int32_t, 34>(rows);
    upload<std::int32_t, 34>(device_targets, targets, rows);
    // [row losses | row hits | the two sums]
    double* sums = scratch<double, 35>(2 * rows + 2);
    kernels::xent::rows<<<static_cast<unsigned>(n), kernels::xent::row_threads(v), 0, stream()>>>(
        logits.data(), device_targets, v, dlogits != nullptr ? dlogits->data() : nullptr,
        grad_scale, sums, sums + rows);
    ABLATE_CUDA_CHECK_LAUNCH("cross_entropy rows");
    kernels::xent::sum_rows<<<1, kThreads, 0, stream()>>>(sums, sums + rows, n, sums + 2 * rows);
    ABLATE_CUDA_CHECK_LAUNCH("cross_entropy sum_rows");
    double host[2] = {0, 0};
    copy_to_host(host, sums + 2 * rows, 2);
    out.loss_sum = host[0];
    out.correct = static_cast<std::size_t>(host[1]);
    return out;
  }
};

}  // namespace ablate::cuda
