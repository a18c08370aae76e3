// Fused (flash-style) scaled dot-product attention, the CUDA twin of cpu/attention.hpp: the same
// shapes, scale, causal mask and dropout mask (element (i, j) of pair bh kept when
// uniform01(key, bh*T*T + i*T + j) >= p, scaled by 1/(1-p)), but no T x T matrix in memory.
//
// Forward: one warp per query row, a block of kAttnWarps rows of one (batch, head) pair.  The
// block walks the keys in tiles of 32 held in shared memory (keys padded to a conflict-free
// stride); lane j scores key j of the tile, the warp keeps an online softmax (running max and
// sum) and each lane accumulates 1/32 of the output row in registers.  Causal blocks stop after
// the tile holding their last row; a warp skips tiles entirely beyond its row, so every tile it
// does process has at least one visible key and the running max is finite (no -inf - -inf).
//
// The saved state (`probs`) is [batch*heads*seq, 1 + v_dim]: column 0 is the row's log-sum-exp
// of the scaled scores, columns 1.. the row's output.  The backward signature carries no output,
// and the softmax backward needs D_i = rowsum(dO_i * O_i) (= rowsum(dP_i * P_i), dropout
// included), so the forward keeps its own copy of O.
//
// Backward, deterministic (no atomics, every gradient element written by exactly one lane):
//   1. dQ kernel, one warp per query row over key tiles: D_i from dO_i and the saved O_i (also
//      written to scratch for step 2), then P_ij = exp(s_ij - lse_i), dP_ij = dO_i . V_j (masked
//      and scaled by dropout), dS_ij = P_ij (dP_ij - D_i) scale, dQ_i = sum_j dS_ij K_j.
//   2. dK/dV kernel, one warp per key row over query tiles (Q, dO, lse and D of 32 queries in
//      shared memory): dV_j = sum_i dropout(P_ij) dO_i, dK_j = sum_i dS_ij Q_i.
//
// fp32 throughout (scores, softmax and accumulations), so results agree with the fp32 CPU
// backend to float rounding.  Head dims (qk_dim, v_dim) from 1 to kAttnMaxDim = 256.
//
// These scalar kernels do about one shared-memory load per FMA; attention_tensor_core.cuh has
// the same three kernels with their products on bf16 tensor cores (fp32 softmax and
// accumulation) for head dims that are multiples of 16 up to 128.  Both write and read the same
// saved state, so either forward feeds either backward.  Which set runs is a process-wide
// choice (AttentionKernel below): by default the tensor-core kernels wherever they apply.
#pragma once

#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "ablate/backend/cuda/buffer.cuh"
#include "ablate/backend/cuda/device.cuh"
#include "ablate/backend/cuda/error.cuh"
#include "ablate/backend/cuda/launch.cuh"
#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/attention_shape.hpp"
#include "ablate/core/error.hpp"
#include "ablate/core/operand_checks.hpp"
#include "ablate/core/random.hpp"

namespace ablate::cuda {

namespace kernels {

constexpr int kAttnTile = kWarp;                    // keys (or queries) per shared tile: one per lane
constexpr int kAttnWarps = 8;                       // rows per block: one per warp
constexpr int kAttnThreads = kAttnWarps * kWarp;
constexpr int kAttnMaxDim = 256;                    // largest qk_dim / v_dim
constexpr int kAttnPerLane = kAttnMaxDim / kWarp;   // register accumulators per lane

// Everything a kernel needs to know about one attention call.
struct AttentionParams {
  std::ptrdiff_t seq = 0, heads = 0, qk_dim = 0, v_dim = 0;
  std::ptrdiff_t ldq = 0, ldk = 0, ldv = 0, ldo = 0;  // row strides of q, k, v and out / dout
  std::ptrdiff_t row_blocks = 0;                      // blocks per (batch, head) pair
  int qk_pad = 0, v_pad = 0;                          // padded shared-memory row strides
  float scale = 1.f;
  bool causal = true;
  double dropout_p = 0.0;
  float dropout_scale = 1.f;  // 1 / (1 - p)
  std::uint64_t key = 0;
};

// Row stride of a shared tile read row-per-lane: 32k + 1 floats puts lane j's row start in bank j.
constexpr int attention_pad(std::ptrdiff_t dim) {
  return static_cast<int>((dim + kWarp - 1) / kWarp * kWarp + 1);
}

// Splits blockIdx.x into the (batch, head) pair and the first row of the block (blocks of
// `rows` rows, p.row_blocks per pair).  Blocks with the most work get the lowest indices, so
// they start first: under a causal mask that is late rows for kernels over query rows
// (late_rows_first) and early rows for kernels over key rows.
struct AttentionBlock {
  std::ptrdiff_t bh, b, h, row0;
};
__device__ inline AttentionBlock attention_block(const AttentionParams& p, int rows,
                                                 bool late_rows_first) {
  AttentionBlock blk{};
  const auto x = static_cast<std::ptrdiff_t>(blockIdx.x);
  blk.bh = x / p.row_blocks;
  blk.b = blk.bh / p.heads;
  blk.h = blk.bh % p.heads;
  const std::ptrdiff_t block = x % p.row_blocks;
  blk.row0 = (late_rows_first ? p.row_blocks - 1 - block : block) * rows;
  return blk;
}

// Dropout mask element (i, j) of pair bh: the CPU backend's stream index.
__device__ inline bool attention_keep(const AttentionParams& p, std::ptrdiff_t bh, std::ptrdiff_t i,
                                      std::ptrdiff_t j) {
  const auto T = static_cast<std::uint64_t>(p.seq);
  const std::uint64_t index = static_cast<std::uint64_t>(bh) * T * T +
                              static_cast<std::uint64_t>(i) * T + static_cast<std::uint64_t>(j);
  return uniform01(p.key, index) >= p.dropout_p;
}

// dst[r * dst_ld + c] = src[(base + first + r) * src_ld + col + c] for r < count, c < width;
// rows at or beyond `limit` (relative to first: first + r >= limit) are zero.  All threads of
// the block take part; the caller synchronises.
__device__ inline void attention_load_tile(float* dst, int dst_ld, const float* src,
                                           std::ptrdiff_t src_ld, std::ptrdiff_t base,
                                           std::ptrdiff_t first, std::ptrdiff_t limit,
                                           std::ptrdiff_t col, std::ptrdiff_t width, int count) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  for (int r = warp; r < count; r += kAttnWarps) {
    const std::ptrdiff_t row = first + r;
    float* d = dst + r * dst_ld;
    if (row < limit) {
      const float* s = src + (base + row) * src_ld + col;
      for (std::ptrdiff_t c = lane; c < width; c += kWarp) d[c] = s[c];
    } else {
      for (std::ptrdiff_t c = lane; c < width; c += kWarp) d[c] = 0.f;
    }
  }
}

// a . b over n floats of shared memory.
__device__ inline float attention_dot(const float* a, const float* b, int n) {
  float acc = 0.f;
#pragma unroll 4
  for (int d = 0; d < n; ++d) acc += a[d] * b[d];
  return acc;
}

// Shared memory: K tile [32][qk_pad], V tile [32][v_dim], query rows [kAttnWarps][qk_dim].
ABLATE_KERNEL void attention_forward(float* out, float* state, const float* q, const float* k,
                                     const float* v, AttentionParams p) {
  extern __shared__ float attn_smem[];
  const int qk = static_cast<int>(p.qk_dim), vd = static_cast<int>(p.v_dim);
  float* ks = attn_smem;
  float* vs = ks + kAttnTile * p.qk_pad;
  float* qs = vs + kAttnTile * vd;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const AttentionBlock blk = attention_block(p, kAttnWarps, true);
  const std::ptrdiff_t T = p.seq, base = blk.b * T;
  const std::ptrdiff_t i = blk.row0 + warp;  // this warp's query row
  const bool active = i < T;
  float* qrow = qs + warp * qk;
  if (active)
    for (int d = lane; d < qk; d += kWarp) qrow[d] = q[(base + i) * p.ldq + blk.h * qk + d];
  // (qrow is read only by its own warp, after the __syncthreads below.)

  const bool dropout = p.dropout_p > 0.0;
  float m = -INFINITY, l = 0.f;
  float acc[kAttnPerLane];
#pragma unroll
  for (int r = 0; r < kAttnPerLane; ++r) acc[r] = 0.f;

  const std::ptrdiff_t last_row = (blk.row0 + kAttnWarps < T ? blk.row0 + kAttnWarps : T) - 1;
  const std::ptrdiff_t key_end = p.causal ? last_row + 1 : T;
  // Block-uniform loop: every thread reaches both __syncthreads of every iteration.
  for (std::ptrdiff_t k0 = 0; k0 < key_end; k0 += kAttnTile) {
    __syncthreads();  // the previous tile is consumed (and qrow written)
    attention_load_tile(ks, p.qk_pad, k, p.ldk, base, k0, T, blk.h * qk, qk, kAttnTile);
    attention_load_tile(vs, vd, v, p.ldv, base, k0, T, blk.h * vd, vd, kAttnTile);
    __syncthreads();
    // Warp-uniform skip: no visible key in this tile for this row.
    if (!active || (p.causal && k0 > i)) continue;
    const std::ptrdiff_t j = k0 + lane;
    const bool visible = j < T && (!p.causal || j <= i);
    const float s = visible ? attention_dot(qrow, ks + lane * p.qk_pad, qk) * p.scale : -INFINITY;
    // Key k0 is visible (k0 <= i, k0 < T), so the tile max and m_new are finite.
    const float m_new = fmaxf(m, warp_max(s));
    const float correction = expf(m - m_new);  // 0 on the first tile (m = -inf)
    const float e = visible ? expf(s - m_new) : 0.f;
    l = l * correction + warp_sum(e);
    const float pv = dropout && visible && !attention_keep(p, blk.bh, i, j) ? 0.f : e;
#pragma unroll
    for (int r = 0; r < kAttnPerLane; ++r) acc[r] *= correction;
    for (int jj = 0; jj < kAttnTile; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, pv, jj);
      if (pj == 0.f) continue;  // warp-uniform: masked or dropped key
      const float* vrow = vs + jj * vd;
#pragma unroll
      for (int r = 0; r < kAttnPerLane; ++r) {
        const int d = lane + r * kWarp;
        if (d < vd) acc[r] += pj * vrow[d];
      }
    }
    m = m_new;
  }
  if (!active) return;
  const float inv = p.dropout_scale / l;  // l >= 1: the row max contributes exp(0)
  float* orow = out + (base + i) * p.ldo + blk.h * vd;
  float* srow = state + (blk.bh * T + i) * (1 + p.v_dim);
#pragma unroll
  for (int r = 0; r < kAttnPerLane; ++r) {
    const int d = lane + r * kWarp;
    if (d < vd) {
      const float o = acc[r] * inv;
      orow[d] = o;
      srow[1 + d] = o;
    }
  }
  if (lane == 0) srow[0] = m + logf(l);
}

// dQ (and D).  Shared memory: K tile [32][qk_pad], V tile [32][v_pad], query rows
// [kAttnWarps][qk_dim], dO rows [kAttnWarps][v_dim].  D_out[bh*T + i] receives D_i.
ABLATE_KERNEL void attention_backward_dq(float* dq, float* d_out, const float* dout,
                                         const float* state, const float* q, const float* k,
                                         const float* v, AttentionParams p) {
  extern __shared__ float attn_smem[];
  const int qk = static_cast<int>(p.qk_dim), vd = static_cast<int>(p.v_dim);
  float* ks = attn_smem;
  float* vs = ks + kAttnTile * p.qk_pad;
  float* qs = vs + kAttnTile * p.v_pad;
  float* dos = qs + kAttnWarps * qk;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const AttentionBlock blk = attention_block(p, kAttnWarps, true);
  const std::ptrdiff_t T = p.seq, base = blk.b * T;
  const std::ptrdiff_t i = blk.row0 + warp;
  const bool active = i < T;
  float* qrow = qs + warp * qk;
  float* dorow = dos + warp * vd;
  float lse = 0.f, D = 0.f;
  if (active) {
    const float* srow = state + (blk.bh * T + i) * (1 + p.v_dim);
    for (int d = lane; d < qk; d += kWarp) qrow[d] = q[(base + i) * p.ldq + blk.h * qk + d];
    float partial = 0.f;
    for (int d = lane; d < vd; d += kWarp) {
      const float g = dout[(base + i) * p.ldo + blk.h * vd + d];
      dorow[d] = g;
      partial += g * srow[1 + d];
    }
    D = warp_sum(partial);  // rowsum(dO_i * O_i); warp-uniform branch, all lanes take part
    lse = srow[0];
    if (lane == 0) d_out[blk.bh * T + i] = D;
  }

  const bool dropout = p.dropout_p > 0.0;
  float acc[kAttnPerLane];
#pragma unroll
  for (int r = 0; r < kAttnPerLane; ++r) acc[r] = 0.f;

  const std::ptrdiff_t last_row = (blk.row0 + kAttnWarps < T ? blk.row0 + kAttnWarps : T) - 1;
  const std::ptrdiff_t key_end = p.causal ? last_row + 1 : T;
  for (std::ptrdiff_t k0 = 0; k0 < key_end; k0 += kAttnTile) {
    __syncthreads();
    attention_load_tile(ks, p.qk_pad, k, p.ldk, base, k0, T, blk.h * qk, qk, kAttnTile);
    attention_load_tile(vs, p.v_pad, v, p.ldv, base, k0, T, blk.h * vd, vd, kAttnTile);
    __syncthreads();
    if (!active || (p.causal && k0 > i)) continue;
    const std::ptrdiff_t j = k0 + lane;
    const bool visible = j < T && (!p.causal || j <= i);
    float ds = 0.f;
    if (visible) {
      const float prob = expf(attention_dot(qrow, ks + lane * p.qk_pad, qk) * p.scale - lse);
      float dp = attention_dot(dorow, vs + lane * p.v_pad, vd);
      if (dropout) dp = attention_keep(p, blk.bh, i, j) ? dp * p.dropout_scale : 0.f;
      ds = prob * (dp - D) * p.scale;
    }
    for (int jj = 0; jj < kAttnTile; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      if (dsj == 0.f) continue;  // warp-uniform
      const float* krow = ks + jj * p.qk_pad;
#pragma unroll
      for (int r = 0; r < kAttnPerLane; ++r) {
        const int d = lane + r * kWarp;
        if (d < qk) acc[r] += dsj * krow[d];
      }
    }
  }
  if (!active) return;
  float* grow = dq + (base + i) * p.ldq + blk.h * qk;
#pragma unroll
  for (int r = 0; r < kAttnPerLane; ++r) {
    const int d = lane + r * kWarp;
    if (d < qk) grow[d] = acc[r];
  }
}

// dK and dV.  Shared memory: Q tile [32][qk_pad], dO tile [32][v_pad], key rows
// [kAttnWarps][qk_dim], value rows [kAttnWarps][v_dim], lse and D of the query tile [32] each.
ABLATE_KERNEL void attention_backward_dkv(float* dk, float* dv, const float* dout,
                                          const float* state, const float* d_in, const float* q,
                                          const float* k, const float* v, AttentionParams p) {
  extern __shared__ float attn_smem[];
  const int qk = static_cast<int>(p.qk_dim), vd = static_cast<int>(p.v_dim);
  float* qt = attn_smem;
  float* dot = qt + kAttnTile * p.qk_pad;
  float* kw = dot + kAttnTile * p.v_pad;
  float* vw = kw + kAttnWarps * qk;
  float* lse_t = vw + kAttnWarps * vd;
  float* d_t = lse_t + kAttnTile;
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  const int warp = static_cast<int>(threadIdx.x) / kWarp;
  const AttentionBlock blk = attention_block(p, kAttnWarps, false);
  const std::ptrdiff_t T = p.seq, base = blk.b * T;
  const std::ptrdiff_t j = blk.row0 + warp;  // this warp's key row
  const bool active = j < T;
  float* krow = kw + warp * qk;
  float* vrow = vw + warp * vd;
  if (active) {
    for (int d = lane; d < qk; d += kWarp) krow[d] = k[(base + j) * p.ldk + blk.h * qk + d];
    for (int d = lane; d < vd; d += kWarp) vrow[d] = v[(base + j) * p.ldv + blk.h * vd + d];
  }

  const bool dropout = p.dropout_p > 0.0;
  float acc_k[kAttnPerLane], acc_v[kAttnPerLane];
#pragma unroll
  for (int r = 0; r < kAttnPerLane; ++r) acc_k[r] = acc_v[r] = 0.f;

  // Causal: queries before the tile holding row0 see none of this block's keys.
  const std::ptrdiff_t q_begin = p.causal ? blk.row0 / kAttnTile * kAttnTile : 0;
  for (std::ptrdiff_t q0 = q_begin; q0 < T; q0 += kAttnTile) {
    __syncthreads();
    attention_load_tile(qt, p.qk_pad, q, p.ldq, base, q0, T, blk.h * qk, qk, kAttnTile);
    attention_load_tile(dot, p.v_pad, dout, p.ldo, base, q0, T, blk.h * vd, vd, kAttnTile);
    if (threadIdx.x < kAttnTile) {
      const std::ptrdiff_t row = q0 + static_cast<std::ptrdiff_t>(threadIdx.x);
      const bool valid = row < T;
      lse_t[threadIdx.x] = valid ? state[(blk.bh * T + row) * (1 + p.v_dim)] : 0.f;
      d_t[threadIdx.x] = valid ? d_in[blk.bh * T + row] : 0.f;
    }
    __syncthreads();
    // Warp-uniform skip: every query of the tile is before this key.
    if (!active || (p.causal && q0 + kAttnTile - 1 < j)) continue;
    const std::ptrdiff_t i = q0 + lane;
    const bool visible = i < T && (!p.causal || i >= j);
    float pd = 0.f, ds = 0.f;
    if (visible) {
      const float prob =
          expf(attention_dot(qt + lane * p.qk_pad, krow, qk) * p.scale - lse_t[lane]);
      float dp = attention_dot(dot + lane * p.v_pad, vrow, vd);
      pd = prob;
      if (dropout) {
        const bool keep = attention_keep(p, blk.bh, i, j);
        pd = keep ? prob * p.dropout_scale : 0.f;
        dp = keep ? dp * p.dropout_scale : 0.f;
      }
      ds = prob * (dp - d_t[lane]) * p.scale;
    }
    for (int ii = 0; ii < kAttnTile; ++ii) {
      const float pdi = __shfl_sync(0xffffffffu, pd, ii);
      const float dsi = __shfl_sync(0xffffffffu, ds, ii);
      if (pdi == 0.f && dsi == 0.f) continue;  // warp-uniform
      const float* qrow = qt + ii * p.qk_pad;
      const float* dorow = dot + ii * p.v_pad;
#pragma unroll
      for (int r = 0; r < kAttnPerLane; ++r) {
        const int d = lane + r * kWarp;
        if (d < vd) acc_v[r] += pdi * dorow[d];
        if (d < qk) acc_k[r] += dsi * qrow[d];
      }
    }
  }
  if (!active) return;
  float* gk = dk + (base + j) * p.ldk + blk.h * qk;
  float* gv = dv + (base + j) * p.ldv + blk.h * vd;
#pragma unroll
  for (int r = 0; r < kAttnPerLane; ++r) {
    const int d = lane + r * kWarp;
    if (d < qk) gk[d] = acc_k[r];
    if (d < vd) gv[d] = acc_v[r];
  }
}

}  // namespace kernels

// Host pieces both kernel sets launch with.

// The kernel parameters of one call, for blocks of `rows_per_block` rows.
inline kernels::AttentionParams attention_params(const Tensor& q, const Tensor& k, const Tensor& v,
                                                 std::ptrdiff_t ldo, const AttentionShape& a,
                                                 double dropout_p, std::uint64_t key,
                                                 int rows_per_block) {
  kernels::AttentionParams p;
  p.seq = a.seq;
  p.heads = a.heads;
  p.qk_dim = a.qk_dim;
  p.v_dim = a.v_dim;
  p.ldq = q.cols();
  p.ldk = k.cols();
  p.ldv = v.cols();
  p.ldo = ldo;
  p.row_blocks = (a.seq + rows_per_block - 1) / rows_per_block;
  p.qk_pad = kernels::attention_pad(a.qk_dim);
  p.v_pad = kernels::attention_pad(a.v_dim);
  p.scale = static_cast<float>(a.scale);
  p.causal = a.causal;
  p.dropout_p = dropout_p > 0.0 ? dropout_p : 0.0;
  p.dropout_scale = dropout_p > 0.0 ? static_cast<float>(1.0 / (1.0 - dropout_p)) : 1.f;
  p.key = key;
  return p;
}

// One block per row block of every (batch, head) pair.
inline unsigned attention_grid(const AttentionShape& a, const kernels::AttentionParams& p) {
  return static_cast<unsigned>(a.batch * a.heads * p.row_blocks);
}

// Launches `kernel` with `bytes` of dynamic shared memory, opting in above the 48 KiB default.
// The attribute is set on every such launch: kernels have internal linkage, so a cache could not
// tell one translation unit's copy from another.
template <class... Params, class... Args>
void launch_attention_kernel(void (*kernel)(Params...), const char* name, unsigned grid,
                             int threads, std::size_t bytes, Args... args) {
  constexpr std::size_t default_limit = 48u << 10;
  const std::size_t limit = Runtime::get().properties().sharedMemPerBlockOptin;
  require(bytes <= limit, name, ": needs ", bytes,
          " bytes of shared memory per block, the device allows ", limit,
          " (use smaller head dims)");
  if (bytes > default_limit)
    ABLATE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(bytes)));
  kernel<<<grid, threads, bytes, stream()>>>(args...);
  ABLATE_CUDA_CHECK_LAUNCH(name);
}

// The tensor-core kernel set, defined in attention_tensor_core.cuh (included at the end of this
// file, after the pieces it builds on).  Callers have validated the shapes.
//   attention_tc_supported: the head dims suit it (multiples of 16 up to 128) and its shared
//     memory fits this device.
//   attention_tc_require: throws, naming the dims, unless the head dims suit it.
//   attention_tc_forward / attention_tc_backward: as AttentionKernels' functions, with out and
//     probs (or dq, dk, dv) already sized.
inline bool attention_tc_supported(const AttentionShape& a);
inline void attention_tc_require(const AttentionShape& a, const char* what);
inline void attention_tc_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const AttentionShape& a, double dropout_p,
                                 std::uint64_t key);
inline void attention_tc_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                  const Tensor& probs, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const AttentionShape& a, double dropout_p,
                                  std::uint64_t key);

// Which attention kernels run, process-wide:
//   automatic    the tensor-core kernels where attention_tc_supported, else the fp32 ones
//   fp32         always the fp32 kernels (agree with the CPU backend to float rounding)
//   tensor_core  always the tensor-core kernels; a shape they cannot run is an error
// The initial choice comes from the environment variable ABLATE_CUDA_ATTENTION (auto, fp32 or
// tensor_core; unset or empty means auto), read once, at the first attention call or query.
enum class AttentionKernel { automatic, fp32, tensor_core };

// ABLATE_CUDA_ATTENTION's spelling of a choice; anything else throws invalid_input.
inline AttentionKernel parse_attention_kernel(std::string_view name) {
  if (name == "auto") return AttentionKernel::automatic;
  if (name == "fp32") return AttentionKernel::fp32;
  if (name == "tensor_core") return AttentionKernel::tensor_core;
  throw invalid_input("ABLATE_CUDA_ATTENTION: expected auto, fp32 or tensor_core, got '" +
                      std::string(name) + "'");
}

// The spelling parse_attention_kernel reads back.
inline const char* attention_kernel_name(AttentionKernel kernel) {
  switch (kernel) {
    case AttentionKernel::fp32:
      return "fp32";
    case AttentionKernel::tensor_core:
      return "tensor_core";
    case AttentionKernel::automatic:
      break;
  }
  return "auto";
}

// The stored choice (an inline function's static: one per process, not per translation unit).
// An invalid ABLATE_CUDA_ATTENTION throws from every use, since the static stays uninitialised.
inline std::atomic<AttentionKernel>& attention_kernel_setting() {
  static std::atomic<AttentionKernel> setting{[] {
    const char* env = std::getenv("ABLATE_CUDA_ATTENTION");
    return env == nullptr || *env == '\0' ? AttentionKernel::automatic
                                          : parse_attention_kernel(env);
  }()};
  return setting;
}
inline void set_attention_kernel(AttentionKernel kernel) {
  attention_kernel_setting().store(kernel);
}
inline AttentionKernel attention_kernel() { return attention_kernel_setting().load(); }

// The kernel set a call of shape `a` runs under the current choice: fp32 or tensor_core.
inline AttentionKernel attention_kernel_for(const AttentionShape& a,
                                            const char* what = "attention") {
  switch (attention_kernel()) {
    case AttentionKernel::fp32:
      return AttentionKernel::fp32;
    case AttentionKernel::tensor_core:
      attention_tc_require(a, what);
      return AttentionKernel::tensor_core;
    case AttentionKernel::automatic:
      break;
  }
  return attention_tc_supported(a) ? AttentionKernel::tensor_core : AttentionKernel::fp32;
}

struct AttentionKernels {
  using Tensor = cuda::Tensor;

  // q, k: [batch*seq, heads*qk_dim]; v: [batch*seq, heads*v_dim]; out: [batch*seq, heads*v_dim];
  // probs: the saved state, [batch*heads*seq, 1 + v_dim] (log-sum-exp and output per row).
  // The fused kernels keep a head's row in shared memory: head dims up to kAttnMaxDim.
  static void check_head_dims(std::ptrdiff_t qk_dim, std::ptrdiff_t v_dim, const char* what) {
    require(qk_dim <= kernels::kAttnMaxDim && v_dim <= kernels::kAttnMaxDim, what,
            ": CUDA attention supports head dims 1..", kernels::kAttnMaxDim, ", got qk_dim ",
            qk_dim, " and v_dim ", v_dim);
  }

  static void attention_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k,
                                const Tensor& v, const AttentionShape& a, double dropout_p,
                                std::uint64_t key) {
    validate("attention_forward", q, k, v, a, dropout_p);
    out.resize(a.batch * a.seq, a.heads * a.v_dim);
    probs.resize(a.batch * a.heads * a.seq, 1 + a.v_dim);
    if (probs.rows() == 0) return;
    if (attention_kernel_for(a, "attention_forward") == AttentionKernel::tensor_core) {
      attention_tc_forward(out, probs, q, k, v, a, dropout_p, key);
      return;
    }
    const kernels::AttentionParams p =
        attention_params(q, k, v, out.cols(), a, dropout_p, key, kernels::kAttnWarps);
    const std::size_t floats =
        static_cast<std::size_t>(kernels::kAttnTile) * static_cast<std::size_t>(p.qk_pad + p.v_dim) +
        static_cast<std::size_t>(kernels::kAttnWarps * p.qk_dim);
    run(kernels::attention_forward, "attention_forward", attention_grid(a, p), floats, out.data(),
        probs.data(), q.data(), k.data(), v.data(), p);
  }

  // dq, dk, dv are overwritten.
  static void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                 const Tensor& probs, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const AttentionShape& a, double dropout_p,
                                 std::uint64_t key) {
    validate("attention_backward", q, k, v, a, dropout_p);
    checks::attention_dout(dout, a, "attention_backward");
    require(probs.rows() == a.batch * a.heads * a.seq && probs.cols() == 1 + a.v_dim,
            "attention_backward: the saved state is [", probs.rows(), ", ", probs.cols(),
            "], expected [", a.batch * a.heads * a.seq, ", ", 1 + a.v_dim,
            "] (pass the probs tensor attention_forward filled for this shape)");
    dq.resize(q.rows(), q.cols());
    dk.resize(k.rows(), k.cols());
    dv.resize(v.rows(), v.cols());
    // Columns beyond the heads (a wider tensor than the shape) get no gradient: zero them.
    if (q.cols() != a.heads * a.qk_dim) TensorKernels::set_zero(dq);
    if (k.cols() != a.heads * a.qk_dim) TensorKernels::set_zero(dk);
    if (v.cols() != a.heads * a.v_dim) TensorKernels::set_zero(dv);
    if (probs.rows() == 0) return;
    if (attention_kernel_for(a, "attention_backward") == AttentionKernel::tensor_core) {
      attention_tc_backward(dq, dk, dv, dout, probs, q, k, v, a, dropout_p, key);
      return;
    }
    const kernels::AttentionParams p =
        attention_params(q, k, v, dout.cols(), a, dropout_p, key, kernels::kAttnWarps);
    float* d = scratch<float, 10>(static_cast<std::size_t>(probs.rows()));
    const auto tile = static_cast<std::size_t>(kernels::kAttnTile);
    const auto warps = static_cast<std::size_t>(kernels::kAttnWarps);
    const auto qk = static_cast<std::size_t>(a.qk_dim), vd = static_cast<std::size_t>(a.v_dim);
    const std::size_t tiles = tile * static_cast<std::size_t>(p.qk_pad + p.v_pad);
    const unsigned grid = attention_grid(a, p);
    run(kernels::attention_backward_dq, "attention_backward_dq", grid, tiles + warps * (qk + vd),
        dq.data(), d, dout.data(), probs.data(), q.data(), k.data(), v.data(), p);
    run(kernels::attention_backward_dkv, "attention_backward_dkv", grid,
        tiles + warps * (qk + vd) + 2 * tile, dk.data(), dv.data(), dout.data(), probs.data(), d,
        q.data(), k.data(), v.data(), p);
  }

 private:
  static void validate(const char* what, const Tensor& q, const Tensor& k, const Tensor& v,
                       const AttentionShape& a, double dropout_p) {
    checks::attention_inputs(q, k, v, a, dropout_p, what);
    check_head_dims(a.qk_dim, a.v_dim, what);
    // The fp32 kernels' blocks are the smallest (kAttnWarps rows), so their grid is the largest.
    const std::ptrdiff_t row_blocks = (a.seq + kernels::kAttnWarps - 1) / kernels::kAttnWarps;
    require(a.batch * a.heads * row_blocks <= 0x7fffffff, what, ": ", a.batch * a.heads,
            " (batch, head) pairs of ", a.seq, " rows exceed the CUDA grid limit");
  }

  // The fp32 kernels' launch: `floats` of dynamic shared memory (at most about 91 KiB, for head
  // dims of 256), kAttnThreads threads.
  template <class... Params, class... Args>
  static void run(void (*kernel)(Params...), const char* name, unsigned grid, std::size_t floats,
                  Args... args) {
    launch_attention_kernel(kernel, name, grid, kernels::kAttnThreads, floats * sizeof(float),
                            args...);
  }
};

}  // namespace ablate::cuda

// The tensor-core kernels and attention_tc_* (declared above).
#include "ablate/backend/cuda/attention_tensor_core.cuh"
