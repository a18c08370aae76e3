// Rotary position embedding applied in place to a slice of every head (layouts: rope_layout.hpp),
// the CUDA twin of cpu/rope.hpp.  One warp per (row, head): its lanes rotate the pairs of the
// rotary slice into a shared-memory copy, then write the slice back, so the DeepSeek layout's
// permutation is safe in place.  Angles are computed in double exactly as the CPU does and the
// rotation uses unfused float multiplies and adds, so results match the CPU to float rounding.
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>

#include "ablate/backend/cuda/device.cuh"
#include "ablate/backend/cuda/error.cuh"
#include "ablate/backend/cuda/launch.cuh"
#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/error.hpp"
#include "ablate/core/operand_checks.hpp"
#include "ablate/core/rope_layout.hpp"

namespace ablate::cuda {

namespace kernels {

constexpr int kRopeWarps = 8;          // (row, head) items per block, one per warp
constexpr int kRopeMaxDim = 1024;      // shared memory: kRopeWarps * rope_dim floats <= 32 KiB

// x is [rows, ld]; head h of row r has its rotary slice at r*ld + h*head_stride + offset.
ABLATE_KERNEL void rope_apply(float* x, std::ptrdiff_t rows, std::ptrdiff_t ld, std::ptrdiff_t seq,
                              std::ptrdiff_t heads, std::ptrdiff_t head_stride,
                              std::ptrdiff_t offset, std::ptrdiff_t rope_dim, double theta,
                              bool deepseek, bool inverse) {
  extern __shared__ float rope_tmp[];
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  float* tmp = rope_tmp + warp * rope_dim;
  const std::ptrdiff_t half = rope_dim / 2;
  const std::ptrdiff_t items = rows * heads;
  const float sign = inverse ? -1.f : 1.f;
  // Source slots: interleaved input, or the DeepSeek output layout when undoing it.
  const bool from_split = deepseek && inverse;
  const bool to_split = deepseek && !inverse;
  // The item loop is warp-uniform, so every lane reaches both __syncwarp calls.
  for (std::ptrdiff_t item = static_cast<std::ptrdiff_t>(blockIdx.x) * kRopeWarps + warp; item < items;
       item += static_cast<std::ptrdiff_t>(gridDim.x) * kRopeWarps) {
    const std::ptrdiff_t r = item / heads, h = item % heads;
    const std::ptrdiff_t t = r % seq;
    float* v = x + r * ld + h * head_stride + offset;
    for (std::ptrdiff_t i = lane; i < half; i += kWarp) {
      const double freq = pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rope_dim));
      const double angle = static_cast<double>(t) * freq;
      const float c = static_cast<float>(cos(angle));
      const float s = static_cast<float>(sin(angle));
      const float a = from_split ? v[i] : v[2 * i];
      const float b = from_split ? v[i + half] : v[2 * i + 1];
      // ra = a*c - sign*b*s, rb = b*c + sign*a*s, rounded like the CPU (no fused multiply-add).
      const float ra = __fsub_rn(__fmul_rn(a, c), __fmul_rn(sign * b, s));
      const float rb = __fadd_rn(__fmul_rn(b, c), __fmul_rn(sign * a, s));
      tmp[to_split ? i : 2 * i] = ra;
      tmp[to_split ? i + half : 2 * i + 1] = rb;
    }
    __syncwarp();
    for (std::ptrdiff_t j = lane; j < rope_dim; j += kWarp) v[j] = tmp[j];
    __syncwarp();  // tmp is rewritten by the next item
  }
}

}  // namespace kernels

struct RopeKernels {
  using Tensor = cuda::Tensor;

  // x rows are tokens (row r has position r % seq); head h occupies columns
  // [h * head_stride, (h + 1) * head_stride) and its rotary part starts at `offset` within it.
  // inverse = true rotates by the negative angle and undoes the layout: the backward pass.
  // A warp rotates one head's slice through shared memory: rope dims up to kRopeMaxDim.
  static void check_rope_dim(std::ptrdiff_t rope_dim, const char* what) {
    require(rope_dim <= kernels::kRopeMaxDim, what, ": rope_dim ", rope_dim,
            " exceeds the CUDA maximum of ", kernels::kRopeMaxDim);
  }

  static void rope_apply(Tensor& x, std::ptrdiff_t seq, std::ptrdiff_t heads,
                         std::ptrdiff_t head_stride, std::ptrdiff_t offset, std::ptrdiff_t rope_dim,
                         double theta, RopeLayout layout, bool inverse) {
    checks::rope(x, seq, heads, head_stride, offset, rope_dim, "rope_apply");
    check_rope_dim(rope_dim, "rope_apply");
    const std::ptrdiff_t items = x.rows() * heads;
    if (items == 0 || rope_dim == 0) return;
    constexpr int threads = kernels::kRopeWarps * kWarp;
    const std::size_t shared = sizeof(float) * kernels::kRopeWarps * static_cast<std::size_t>(rope_dim);
    const unsigned blocks = blocks_for(static_cast<std::size_t>(items), kernels::kRopeWarps);
    kernels::rope_apply<<<blocks, threads, shared, stream()>>>(
        x.data(), x.rows(), x.cols(), seq, heads, head_stride, offset, rope_dim, theta,
        layout == RopeLayout::DeepSeek, inverse);
    ABLATE_CUDA_CHECK_LAUNCH("rope_apply");
  }
};

}  // namespace ablate::cuda
