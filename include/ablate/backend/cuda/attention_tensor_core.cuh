// Tensor-core (flash-style) attention: the kernels of attention.cuh with their matrix products
// on bf16 tensor cores (nvcuda::wmma m16n16k16, fp32 accumulators).  Same semantics, same saved
// state ([batch*heads*seq, 1 + v_dim]: the row's log-sum-exp of the scaled scores, then its
// output) and the same dropout stream, so either forward feeds either backward.  AttentionKernels
// (attention.cuh) picks this set or the fp32 one; include attention.cuh, which includes this file.
//
// Why: the fp32 kernels do about one shared-memory load per FMA; here one warp-wide m16n16k16
// mma does 4096 multiply-adds for two operand fragment loads.  Only the matrix operands are
// rounded to bf16: Q, K, V and dO when they are staged into shared memory (global memory stays
// fp32), P and dS before their products.  Scores, the softmax statistics (running max and sum),
// D and every accumulation stay fp32.  Head dims must be multiples of 16 (the fragment size) up
// to 128.
//
// Blocks of kRows = 64 rows of one (batch, head) pair, one warp per 16 rows; the other side
// (keys in the forward and dQ kernels, queries in the dK/dV kernel) comes in shared tiles of
// kCols = 64 rows, zero beyond the sequence, so any length works.  Per tile each warp:
//   1. puts its 16 x 64 score tile (fp32) into a per-warp shared buffer (store_matrix_sync);
//   2. runs the element-wise step on it with two lanes per row: WMMA fragments' element layout
//      is unspecified, so rows are only ever indexed in shared memory, never in a fragment;
//   3. writes P (or dS) as bf16 to a per-warp buffer, the A operand of the next product, which
//      accumulates into a per-warp fp32 buffer (load_matrix_sync as accumulator, mma, store).
// Forward: online softmax per row; the output accumulator is rescaled in shared memory
// (O = O * correction) before P V is added.  Column fragments that no row of the warp can see
// (beyond the sequence, or after the diagonal under the causal mask) are skipped; the
// element-wise step masks by index, so whatever such a fragment's buffer holds is never used.
// Backward, deterministic (no atomics), P recomputed from Q, K and the saved log-sum-exp:
//   dQ kernel over query blocks: D_i = rowsum(dO_i * O_i) in fp32 (also written for the next
//     kernel), then per key tile S = Q K^T, P (kept in registers), dP = dO V^T into the score
//     buffer, dS = P (dropout(dP) - D) scale, dQ += dS K.
//   dK/dV kernel over key blocks: per query tile S^T = K Q^T, P^T, dV += dropout(P)^T dO,
//     dP^T = V dO^T, dS^T, dK += dS^T Q.
// Synchronisation: __syncthreads around the block-shared tiles, at loop level so that every
// thread reaches every barrier; __syncwarp between the phases on a warp's own buffers.
//
// Shared memory per block (bytes; attention_tc_shared_bytes is the largest of the three):
//   head dims 16/16:   forward 40,960   dQ 44,032    dK/dV 49,664
//   head dims 64/64:   forward 71,680   dQ 80,896    dK/dV 98,816   (H200: 3, 2, 2 blocks/SM)
//   head dims 128/128: forward 112,640  dQ 130,048   dK/dV 164,352  (H200: 2, 1, 1 blocks/SM)
// Every buffer starts 128-byte aligned; rows are padded by 8 bf16 or 4 floats (16 bytes), which
// keeps the 32-byte fragment alignment and the ldm multiples (8 bf16, 4 floats) and staggers
// the banks of consecutive rows.  bf16 WMMA needs sm_80 or later, like the build's targets.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "ablate/backend/cuda/attention.cuh"

namespace ablate::cuda {

namespace kernels::attn_tc {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

constexpr int kFrag = 16;                     // WMMA m = n = k
constexpr int kWarps = 4;                     // warps per block
constexpr int kTcThreads = kWarps * kWarp;    // 128
constexpr int kRows = kWarps * kFrag;         // rows per block: 16 per warp
constexpr int kCols = 64;                     // rows of the other side per shared tile
constexpr int kColFrags = kCols / kFrag;      // 16-column fragments of a score tile
constexpr int kPerLane = kCols / 2;           // score-row elements per lane (two lanes a row)
constexpr int kMaxDim = 128;                  // largest qk_dim / v_dim

using FragA = wmma::fragment<wmma::matrix_a, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using FragB = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::row_major>;
using FragBt = wmma::fragment<wmma::matrix_b, kFrag, kFrag, kFrag, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, kFrag, kFrag, kFrag, float>;

// Shared row strides (elements): +8 bf16 / +4 floats (16 bytes) keep fragment rows 32-byte
// aligned for widths that are multiples of 16, and put the 8 rows one ldmatrix phase reads in
// different banks.
__host__ __device__ constexpr int bf16_ld(int width) { return width + 8; }
__host__ __device__ constexpr int f32_ld(int width) { return width + 4; }

constexpr int kScoreLd = f32_ld(kCols);  // per-warp fp32 score tile [16][kScoreLd]
constexpr int kProbLd = bf16_ld(kCols);  // per-warp bf16 P / dS tile [16][kProbLd]

// Byte offsets of the buffers in dynamic shared memory, each 128-byte aligned.  The host sizes
// the launch and the kernel finds its buffers with the same code.
struct SmemPlan {
  std::size_t bytes = 0;
  template <class T>
  __host__ __device__ std::size_t take(std::size_t count) {
    const std::size_t offset = (bytes + 127) / 128 * 128;
    bytes = offset + count * sizeof(T);
    return offset;
  }
};

// Forward: Q block, K and V tiles (bf16); per warp: scores (fp32), P (bf16), O (fp32).
struct ForwardSmem {
  std::size_t q, k, v, scores, probs, out, bytes;
  __host__ __device__ ForwardSmem(int qk, int vd) {
    SmemPlan plan;
    q = plan.take<bf16>(static_cast<std::size_t>(kRows * bf16_ld(qk)));
    k = plan.take<bf16>(static_cast<std::size_t>(kCols * bf16_ld(qk)));
    v = plan.take<bf16>(static_cast<std::size_t>(kCols * bf16_ld(vd)));
    scores = plan.take<float>(static_cast<std::size_t>(kRows * kScoreLd));
    probs = plan.take<bf16>(static_cast<std::size_t>(kRows * kProbLd));
    out = plan.take<float>(static_cast<std::size_t>(kRows * f32_ld(vd)));
    bytes = plan.bytes;
  }
};

// dQ: Q and dO blocks, K and V tiles (bf16); per warp: scores / dP (fp32), dS (bf16), dQ (fp32).
struct DqSmem {
  std::size_t q, dout, k, v, scores, ds, dq, bytes;
  __host__ __device__ DqSmem(int qk, int vd) {
    SmemPlan plan;
    q = plan.take<bf16>(static_cast<std::size_t>(kRows * bf16_ld(qk)));
    dout = plan.take<bf16>(static_cast<std::size_t>(kRows * bf16_ld(vd)));
    k = plan.take<bf16>(static_cast<std::size_t>(kCols * bf16_ld(qk)));
    v = plan.take<bf16>(static_cast<std::size_t>(kCols * bf16_ld(vd)));
    scores = plan.take<float>(static_cast<std::size_t>(kRows * kScoreLd));
    ds = plan.take<bf16>(static_cast<std::size_t>(kRows * kProbLd));
    dq = plan.take<float>(static_cast<std::size_t>(kRows * f32_ld(qk)));
    bytes = plan.bytes;
  }
};

// dK/dV: K and V blocks, Q and dO tiles (bf16); per warp: scores / dP (fp32), P / dS (bf16), dK
// and dV (fp32); the query tile's log-sum-exp and D (fp32).
struct DkvSmem {
  std::size_t k, v, q, dout, scores, pds, dk, dv, lse, d, bytes;
  __host__ __device__ DkvSmem(int qk, int vd) {
    SmemPlan plan;
    k = plan.take<bf16>(static_cast<std::size_t>(kRows * bf16_ld(qk)));
    v = plan.take<bf16>(static_cast<std::size_t>(kRows * bf16_ld(vd)));
    q = plan.take<bf16>(static_cast<std::size_t>(kCols * bf16_ld(qk)));
    dout = plan.take<bf16>(static_cast<std::size_t>(kCols * bf16_ld(vd)));
    scores = plan.take<float>(static_cast<std::size_t>(kRows * kScoreLd));
    pds = plan.take<bf16>(static_cast<std::size_t>(kRows * kProbLd));
    dk = plan.take<float>(static_cast<std::size_t>(kRows * f32_ld(qk)));
    dv = plan.take<float>(static_cast<std::size_t>(kRows * f32_ld(vd)));
    lse = plan.take<float>(kCols);
    d = plan.take<float>(kCols);
    bytes = plan.bytes;
  }
};

template <class T>
__device__ inline T* smem_at(unsigned char* base, std::size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

// dst[r * dst_ld + c] = bf16(src[(row0 + r) * src_ld + col + c]) for r < rows, c < width (a
// multiple of 4); rows r >= valid are zero, so padded rows add nothing to any product.  `vec4`:
// every source row starts 16-byte aligned (float4 loads).  All threads of the block take part;
// the caller synchronises.
__device__ inline void stage_bf16(bf16* dst, int dst_ld, const float* __restrict__ src,
                                  std::ptrdiff_t src_ld, std::ptrdiff_t row0, std::ptrdiff_t col,
                                  int rows, std::ptrdiff_t valid, int width, bool vec4) {
  const int quads = width / 4;
  for (int idx = static_cast<int>(threadIdx.x); idx < rows * quads; idx += kTcThreads) {
    const int r = idx / quads, c = idx % quads * 4;
    float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
    if (r < valid) {
      const float* s = src + (row0 + r) * src_ld + col + c;
      x = vec4 ? *reinterpret_cast<const float4*>(s) : make_float4(s[0], s[1], s[2], s[3]);
    }
    auto* d = reinterpret_cast<__nv_bfloat162*>(dst + r * dst_ld + c);
    d[0] = __floats2bfloat162_rn(x.x, x.y);
    d[1] = __floats2bfloat162_rn(x.z, x.w);
  }
}

// n floats of a warp's own buffer = 0.
__device__ inline void warp_zero(float* p, int n) {
  for (int x = static_cast<int>(threadIdx.x) % kWarp; x < n; x += kWarp) p[x] = 0.f;
}

// out[0:16, 16n:16n+16] = A B_n^T (fp32) for column fragments n in [first, last): A is 16 x depth,
// B_n rows 16n..16n+15 of a tile, both row-major bf16 (B read as a column-major B^T).  Each A
// fragment is loaded once and used for every n; the accumulators stay in registers.
__device__ inline void mma_abt(float* out, int out_ld, const bf16* a, int a_ld, const bf16* b,
                               int b_ld, int depth, int first, int last) {
  FragC acc[kColFrags];
#pragma unroll
  for (int n = 0; n < kColFrags; ++n) wmma::fill_fragment(acc[n], 0.f);
  for (int kk = 0; kk < depth; kk += kFrag) {
    FragA fa;
    wmma::load_matrix_sync(fa, a + kk, static_cast<unsigned>(a_ld));
#pragma unroll
    for (int n = 0; n < kColFrags; ++n) {
      if (n < first || n >= last) continue;
      FragBt fb;
      wmma::load_matrix_sync(fb, b + n * kFrag * b_ld + kk, static_cast<unsigned>(b_ld));
      wmma::mma_sync(acc[n], fa, fb, acc[n]);
    }
  }
#pragma unroll
  for (int n = 0; n < kColFrags; ++n)
    if (n >= first && n < last)
      wmma::store_matrix_sync(out + n * kFrag, acc[n], static_cast<unsigned>(out_ld),
                              wmma::mem_row_major);
}

// acc[0:16, 0:width] += A[:, 16kk:16kk+16] B[16kk:16kk+16, :] summed over k fragments kk in
// [first, last): A is a 16 x kCols bf16 tile (P or dS), B a kCols x width row-major bf16 tile,
// acc fp32 in shared memory.  A's fragments are loaded once; the k fragments outside the range
// hold only zeros of A, so skipping them is exact.
__device__ inline void mma_acc_ab(float* acc, int acc_ld, const bf16* a, int a_ld, const bf16* b,
                                  int b_ld, int width, int first, int last) {
  FragA fa[kColFrags];
#pragma unroll
  for (int kk = 0; kk < kColFrags; ++kk)
    if (kk >= first && kk < last)
      wmma::load_matrix_sync(fa[kk], a + kk * kFrag, static_cast<unsigned>(a_ld));
  for (int n = 0; n < width; n += kFrag) {
    FragC c;
    wmma::load_matrix_sync(c, acc + n, static_cast<unsigned>(acc_ld), wmma::mem_row_major);
#pragma unroll
    for (int kk = 0; kk < kColFrags; ++kk) {
      if (kk < first || kk >= last) continue;
      FragB fb;
      wmma::load_matrix_sync(fb, b + kk * kFrag * b_ld + n, static_cast<unsigned>(b_ld));
      wmma::mma_sync(c, fa[kk], fb, c);
    }
    wmma::store_matrix_sync(acc + n, c, static_cast<unsigned>(acc_ld), wmma::mem_row_major);
  }
}

// Column fragments [0, result) of a tile starting at `first` that hold a column below `end`.
__device__ inline int fragments_before(std::ptrdiff_t end, std::ptrdiff_t first) {
  const std::ptrdiff_t n = (end - first + kFrag - 1) / kFrag;
  return n <= 0 ? 0 : (n >= kColFrags ? kColFrags : static_cast<int>(n));
}

// Masks over the lane's share of a score-tile row: bit c is tile column 2c + half, at sequence
// position col0 + 2c (col0 includes half); `row` is the lane's row.  Rows are queries in the
// forward and dQ kernels (columns are keys), keys in the dK/dV kernel (columns are queries).
// Both depend on positions only, so the kernels compute them before the tile's products, while
// few registers are live.

// The unmasked columns: both positions inside the sequence, and key <= query if causal.
__device__ __forceinline__ unsigned visible_columns(std::ptrdiff_t row, std::ptrdiff_t col0,
                                                    std::ptrdiff_t seq, bool causal,
                                                    bool rows_are_queries) {
  if (row >= seq) return 0;
  unsigned visible = 0;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const std::ptrdiff_t col = col0 + 2 * c;
    const bool vis = col < seq && (!causal || (rows_are_queries ? col <= row : col >= row));
    visible |= vis ? 1u << c : 0u;
  }
  return visible;
}

// The columns of `visible` that dropout keeps (all of them without dropout).  Not unrolled: the
// hash is long, and 32 inlined copies cost registers for no gain.
__device__ __forceinline__ unsigned dropout_kept(const AttentionParams& p, std::ptrdiff_t bh,
                                                 unsigned visible, std::ptrdiff_t row,
                                                 std::ptrdiff_t col0, bool rows_are_queries) {
  if (p.dropout_p <= 0.0) return visible;
  unsigned kept = 0;
#pragma unroll 1
  for (int c = 0; c < kPerLane; ++c) {
    if (!(visible >> c & 1u)) continue;
    const std::ptrdiff_t col = col0 + 2 * c;
    const bool keep = rows_are_queries ? attention_keep(p, bh, row, col)
                                       : attention_keep(p, bh, col, row);
    kept |= keep ? 1u << c : 0u;
  }
  return kept;
}

// dst[r * ld + c] = acc[r * acc_ld + c] * (scale of row r) for the warp's 16 rows r with
// row0 + r < limit, c < width: lanes across columns (coalesced); `row_scale` is lane 2r's value.
__device__ inline void write_rows(float* dst, std::ptrdiff_t dst_ld, const float* acc, int acc_ld,
                                  std::ptrdiff_t row0, std::ptrdiff_t limit, int width,
                                  float row_scale) {
  const int lane = static_cast<int>(threadIdx.x) % kWarp;
  for (int r = 0; r < kFrag; ++r) {
    const float s = __shfl_sync(0xffffffffu, row_scale, 2 * r);
    if (row0 + r >= limit) break;  // warp-uniform
    float* d = dst + (row0 + r) * dst_ld;
    for (int c = lane; c < width; c += kWarp) d[c] = acc[r * acc_ld + c] * s;
  }
}

// Where a thread stands in its block: the block's (batch, head) pair and first row (queries in
// the forward and dQ kernels, keys in the dK/dV kernel), its warp's 16 rows, and the lane pair
// (2r, 2r+1) that owns row r of the warp in the element-wise steps, lane 2r + half taking
// columns 2c + half.
struct WarpRows {
  AttentionBlock blk;
  std::ptrdiff_t T, base;  // sequence length; first token row of the batch element
  std::ptrdiff_t row0;     // the warp's first row
  std::ptrdiff_t row;      // the lane pair's row
  int lane, warp, r, half;
  bool active;             // the warp has a row inside the sequence (warp-uniform)
  __device__ WarpRows(const AttentionParams& p, bool late_rows_first)
      : blk(attention_block(p, kRows, late_rows_first)),
        T(p.seq),
        base(blk.b * p.seq),
        lane(static_cast<int>(threadIdx.x) % kWarp),
        warp(static_cast<int>(threadIdx.x) / kWarp) {
    row0 = blk.row0 + warp * kFrag;
    r = lane / 2;
    half = lane % 2;
    row = row0 + r;
    active = row0 < T;
  }
  // Keys the forward and dQ kernels visit: to the block's last row under the causal mask; and
  // the keys any row of this warp sees.
  __device__ std::ptrdiff_t key_end(bool causal) const {
    return causal ? (blk.row0 + kRows < T ? blk.row0 + kRows : T) : T;
  }
  __device__ std::ptrdiff_t warp_key_end(bool causal) const {
    return causal ? (row0 + kFrag < T ? row0 + kFrag : T) : T;
  }
};

// Output and saved state.  Grid: one block per 64 query rows of a (batch, head) pair.
ABLATE_KERNEL void __launch_bounds__(kTcThreads)
    forward(float* __restrict__ out, float* __restrict__ state, const float* __restrict__ q,
            const float* __restrict__ k, const float* __restrict__ v, AttentionParams p,
            bool vec4) {
  extern __shared__ __align__(128) unsigned char attn_tc_smem[];
  const int qk = static_cast<int>(p.qk_dim), vd = static_cast<int>(p.v_dim);
  const ForwardSmem plan(qk, vd);
  const int q_ld = bf16_ld(qk), v_ld = bf16_ld(vd), o_ld = f32_ld(vd);
  const WarpRows w(p, true);
  const AttentionBlock& blk = w.blk;
  const std::ptrdiff_t T = w.T, base = w.base, warp_row0 = w.row0, i = w.row;
  const int warp = w.warp, r = w.r, half = w.half;
  bf16* qs = smem_at<bf16>(attn_tc_smem, plan.q);
  bf16* ks = smem_at<bf16>(attn_tc_smem, plan.k);
  bf16* vs = smem_at<bf16>(attn_tc_smem, plan.v);
  float* scores = smem_at<float>(attn_tc_smem, plan.scores) + warp * kFrag * kScoreLd;
  bf16* probs = smem_at<bf16>(attn_tc_smem, plan.probs) + warp * kFrag * kProbLd;
  float* acc = smem_at<float>(attn_tc_smem, plan.out) + warp * kFrag * o_ld;

  stage_bf16(qs, q_ld, q, p.ldq, base + blk.row0, blk.h * qk, kRows, T - blk.row0, qk, vec4);
  warp_zero(acc, kFrag * o_ld);
  warp_zero(scores, kFrag * kScoreLd);  // fragments never stored still read as numbers

  float m = -INFINITY, l = 0.f;  // running max and sum of the row's scaled scores
  const std::ptrdiff_t key_end = w.key_end(p.causal), warp_key_end = w.warp_key_end(p.causal);
  // Block-uniform loop: every thread reaches both barriers of every iteration.
  for (std::ptrdiff_t k0 = 0; k0 < key_end; k0 += kCols) {
    __syncthreads();  // the previous tiles are consumed (and Q staged)
    stage_bf16(ks, q_ld, k, p.ldk, base + k0, blk.h * qk, kCols, T - k0, qk, vec4);
    stage_bf16(vs, v_ld, v, p.ldv, base + k0, blk.h * vd, kCols, T - k0, vd, vec4);
    __syncthreads();
    if (!w.active) continue;
    const int frags = fragments_before(warp_key_end, k0);
    const unsigned visible = visible_columns(i, k0 + half, T, p.causal, true);
    const unsigned kept = dropout_kept(p, blk.bh, visible, i, k0 + half, true);
    mma_abt(scores, kScoreLd, qs + warp * kFrag * q_ld, q_ld, ks, q_ld, qk, 0, frags);
    __syncwarp();

    // Online softmax of row i over this tile; P (dropout applied, unnormalised) to bf16.
    const float* srow = scores + r * kScoreLd;
    float s[kPerLane];
    float tile_max = -INFINITY;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      s[c] = visible >> c & 1u ? srow[2 * c + half] * p.scale : -INFINITY;
      tile_max = fmaxf(tile_max, s[c]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m, tile_max);
    // A row with no visible key so far (padding) keeps m = -inf: subtract 0 there, so that
    // every exp is of -inf (0) and never of -inf - -inf (NaN).
    const float m_ref = m_new == -INFINITY ? 0.f : m_new;
    const float correction = __expf(m - m_ref);  // 0 on the row's first visible tile
    float sum = 0.f;
    bf16* prow = probs + r * kProbLd;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const float e = __expf(s[c] - m_ref);  // 0 where masked
      sum += e;
      prow[2 * c + half] = __float2bfloat16_rn(kept >> c & 1u ? e : 0.f);
    }
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    l = l * correction + sum;
    m = m_new;
    float* orow = acc + r * o_ld;
    for (int d = half; d < vd; d += 2) orow[d] *= correction;
    __syncwarp();
    mma_acc_ab(acc, o_ld, probs, kProbLd, vs, v_ld, vd, 0, frags);  // O += P V
  }
  if (!w.active) return;
  __syncwarp();  // the last O update is visible to every lane
  // l >= 1 for a real row (its max contributes exp(0)); padded rows are not written.
  const float inv = p.dropout_scale / l;
  write_rows(out + blk.h * vd, p.ldo, acc, o_ld, base + warp_row0, base + T, vd, inv);
  float* state_rows = state + blk.bh * T * (1 + p.v_dim);
  write_rows(state_rows + 1, 1 + p.v_dim, acc, o_ld, warp_row0, T, vd, inv);
  if (half == 0 && i < T) state_rows[i * (1 + p.v_dim)] = m + logf(l);
}

// dQ, and D_i = rowsum(dO_i * O_i) into d_out[bh*T + i] for the dK/dV kernel.  Grid: one block
// per 64 query rows of a (batch, head) pair.
ABLATE_KERNEL void __launch_bounds__(kTcThreads)
    backward_dq(float* __restrict__ dq, float* __restrict__ d_out, const float* __restrict__ dout,
                const float* __restrict__ state, const float* __restrict__ q,
                const float* __restrict__ k, const float* __restrict__ v, AttentionParams p,
                bool vec4) {
  extern __shared__ __align__(128) unsigned char attn_tc_smem[];
  const int qk = static_cast<int>(p.qk_dim), vd = static_cast<int>(p.v_dim);
  const DqSmem plan(qk, vd);
  const int q_ld = bf16_ld(qk), v_ld = bf16_ld(vd), dq_ld = f32_ld(qk);
  const WarpRows w(p, true);
  const AttentionBlock& blk = w.blk;
  const std::ptrdiff_t T = w.T, base = w.base, warp_row0 = w.row0, i = w.row;
  const int lane = w.lane, warp = w.warp, r = w.r, half = w.half;
  bf16* qs = smem_at<bf16>(attn_tc_smem, plan.q);
  bf16* dos = smem_at<bf16>(attn_tc_smem, plan.dout);
  bf16* ks = smem_at<bf16>(attn_tc_smem, plan.k);
  bf16* vs = smem_at<bf16>(attn_tc_smem, plan.v);
  float* scores = smem_at<float>(attn_tc_smem, plan.scores) + warp * kFrag * kScoreLd;
  bf16* ds = smem_at<bf16>(attn_tc_smem, plan.ds) + warp * kFrag * kProbLd;
  float* acc = smem_at<float>(attn_tc_smem, plan.dq) + warp * kFrag * dq_ld;

  stage_bf16(qs, q_ld, q, p.ldq, base + blk.row0, blk.h * qk, kRows, T - blk.row0, qk, vec4);
  stage_bf16(dos, v_ld, dout, p.ldo, base + blk.row0, blk.h * vd, kRows, T - blk.row0, vd, vec4);
  warp_zero(acc, kFrag * dq_ld);
  warp_zero(scores, kFrag * kScoreLd);

  // Row statistics in fp32 from global memory: the saved log-sum-exp, and D from the fp32 dO
  // and the saved output.  Each lane keeps its own row's pair.
  float lse = 0.f, D = 0.f;
  for (int rr = 0; rr < kFrag; ++rr) {
    const std::ptrdiff_t row = warp_row0 + rr;
    if (row >= T) break;  // warp-uniform
    const float* srow = state + (blk.bh * T + row) * (1 + p.v_dim);
    const float* grow = dout + (base + row) * p.ldo + blk.h * vd;
    float partial = 0.f;
    for (int d = lane; d < vd; d += kWarp) partial += grow[d] * srow[1 + d];
    const float row_d = warp_sum(partial);
    if (lane == 0) d_out[blk.bh * T + row] = row_d;
    if (rr == r) {
      lse = srow[0];
      D = row_d;
    }
  }

  const std::ptrdiff_t key_end = w.key_end(p.causal), warp_key_end = w.warp_key_end(p.causal);
  for (std::ptrdiff_t k0 = 0; k0 < key_end; k0 += kCols) {
    __syncthreads();
    stage_bf16(ks, q_ld, k, p.ldk, base + k0, blk.h * qk, kCols, T - k0, qk, vec4);
    stage_bf16(vs, v_ld, v, p.ldv, base + k0, blk.h * vd, kCols, T - k0, vd, vec4);
    __syncthreads();
    if (!w.active) continue;
    const int frags = fragments_before(warp_key_end, k0);
    const unsigned visible = visible_columns(i, k0 + half, T, p.causal, true);
    const unsigned kept = dropout_kept(p, blk.bh, visible, i, k0 + half, true);
    mma_abt(scores, kScoreLd, qs + warp * kFrag * q_ld, q_ld, ks, q_ld, qk, 0, frags);  // S
    __syncwarp();
    const float* srow = scores + r * kScoreLd;
    float prob[kPerLane];
#pragma unroll
    for (int c = 0; c < kPerLane; ++c)
      prob[c] = visible >> c & 1u ? __expf(srow[2 * c + half] * p.scale - lse) : 0.f;
    __syncwarp();  // every lane has read its scores before dP replaces them
    mma_abt(scores, kScoreLd, dos + warp * kFrag * v_ld, v_ld, vs, v_ld, vd, 0, frags);  // dP
    __syncwarp();
    bf16* dsrow = ds + r * kProbLd;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      float g = 0.f;
      if (visible >> c & 1u) {
        // Dropout's backward on dP: kept elements scaled, dropped ones 0 (dropout_scale is 1
        // without dropout, where kept == visible).
        const float dp = kept >> c & 1u ? srow[2 * c + half] * p.dropout_scale : 0.f;
        g = prob[c] * (dp - D) * p.scale;
      }
      dsrow[2 * c + half] = __float2bfloat16_rn(g);
    }
    __syncwarp();
    mma_acc_ab(acc, dq_ld, ds, kProbLd, ks, q_ld, qk, 0, frags);  // dQ += dS K
  }
  if (!w.active) return;
  __syncwarp();
  write_rows(dq + blk.h * qk, p.ldq, acc, dq_ld, base + warp_row0, base + T, qk, 1.f);
}

// dK and dV.  d_in: D from backward_dq.  Grid: one block per 64 key rows of a (batch, head)
// pair, early keys first (under the causal mask they see the most queries).
ABLATE_KERNEL void __launch_bounds__(kTcThreads)
    backward_dkv(float* __restrict__ dk, float* __restrict__ dv, const float* __restrict__ dout,
                 const float* __restrict__ state, const float* __restrict__ d_in,
                 const float* __restrict__ q, const float* __restrict__ k,
                 const float* __restrict__ v, AttentionParams p, bool vec4) {
  extern __shared__ __align__(128) unsigned char attn_tc_smem[];
  const int qk = static_cast<int>(p.qk_dim), vd = static_cast<int>(p.v_dim);
  const DkvSmem plan(qk, vd);
  const int k_ld = bf16_ld(qk), v_ld = bf16_ld(vd), dk_ld = f32_ld(qk), dv_ld = f32_ld(vd);
  // Rows are keys here: lane pair (2r, 2r+1) owns key row j, lane 2r + half query columns.
  const WarpRows w(p, false);
  const AttentionBlock& blk = w.blk;
  const std::ptrdiff_t T = w.T, base = w.base, warp_key0 = w.row0, j = w.row;
  const int warp = w.warp, r = w.r, half = w.half;
  bf16* ks = smem_at<bf16>(attn_tc_smem, plan.k);
  bf16* vs = smem_at<bf16>(attn_tc_smem, plan.v);
  bf16* qt = smem_at<bf16>(attn_tc_smem, plan.q);
  bf16* dot = smem_at<bf16>(attn_tc_smem, plan.dout);
  float* scores = smem_at<float>(attn_tc_smem, plan.scores) + warp * kFrag * kScoreLd;
  bf16* pds = smem_at<bf16>(attn_tc_smem, plan.pds) + warp * kFrag * kProbLd;
  float* acc_k = smem_at<float>(attn_tc_smem, plan.dk) + warp * kFrag * dk_ld;
  float* acc_v = smem_at<float>(attn_tc_smem, plan.dv) + warp * kFrag * dv_ld;
  float* lse_t = smem_at<float>(attn_tc_smem, plan.lse);
  float* d_t = smem_at<float>(attn_tc_smem, plan.d);

  stage_bf16(ks, k_ld, k, p.ldk, base + blk.row0, blk.h * qk, kRows, T - blk.row0, qk, vec4);
  stage_bf16(vs, v_ld, v, p.ldv, base + blk.row0, blk.h * vd, kRows, T - blk.row0, vd, vec4);
  warp_zero(acc_k, kFrag * dk_ld);
  warp_zero(acc_v, kFrag * dv_ld);
  warp_zero(scores, kFrag * kScoreLd);

  // Causal: query tiles before the block's first key see none of its keys (kCols == kRows, so
  // the block's first key starts a tile).
  static_assert(kCols == kRows, "the causal start assumes aligned key blocks and query tiles");
  const std::ptrdiff_t q_begin = p.causal ? blk.row0 : 0;
  for (std::ptrdiff_t q0 = q_begin; q0 < T; q0 += kCols) {
    __syncthreads();
    stage_bf16(qt, k_ld, q, p.ldq, base + q0, blk.h * qk, kCols, T - q0, qk, vec4);
    stage_bf16(dot, v_ld, dout, p.ldo, base + q0, blk.h * vd, kCols, T - q0, vd, vec4);
    if (threadIdx.x < kCols) {
      const std::ptrdiff_t row = q0 + static_cast<std::ptrdiff_t>(threadIdx.x);
      const bool valid = row < T;
      lse_t[threadIdx.x] = valid ? state[(blk.bh * T + row) * (1 + p.v_dim)] : 0.f;
      d_t[threadIdx.x] = valid ? d_in[blk.bh * T + row] : 0.f;
    }
    __syncthreads();
    if (!w.active) continue;
    // Query fragments holding a pair this warp's keys take part in: below T, and under the
    // causal mask from the fragment of the warp's first key on (query i sees key j for i >= j).
    const std::ptrdiff_t ahead = warp_key0 - q0;
    const int first = p.causal && ahead > 0 ? static_cast<int>(ahead / kFrag) : 0;
    const int last = fragments_before(T, q0);
    if (first >= last) continue;
    const unsigned visible = visible_columns(j, q0 + half, T, p.causal, false);
    const unsigned kept = dropout_kept(p, blk.bh, visible, j, q0 + half, false);
    mma_abt(scores, kScoreLd, ks + warp * kFrag * k_ld, k_ld, qt, k_ld, qk, first, last);  // S^T
    __syncwarp();
    const float* srow = scores + r * kScoreLd;
    float prob[kPerLane];
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int col = 2 * c + half;
      prob[c] = visible >> c & 1u ? __expf(srow[col] * p.scale - lse_t[col]) : 0.f;
      const float dropped_p = kept >> c & 1u ? prob[c] * p.dropout_scale : 0.f;
      pds[r * kProbLd + col] = __float2bfloat16_rn(dropped_p);
    }
    __syncwarp();  // P^T written, and every lane has read its scores
    mma_acc_ab(acc_v, dv_ld, pds, kProbLd, dot, v_ld, vd, first, last);  // dV += P~^T dO
    mma_abt(scores, kScoreLd, vs + warp * kFrag * v_ld, v_ld, dot, v_ld, vd, first, last);  // dP^T
    __syncwarp();  // dV's product has read P^T, and dP^T is stored
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int col = 2 * c + half;
      float g = 0.f;
      if (visible >> c & 1u) {
        const float dp = kept >> c & 1u ? srow[col] * p.dropout_scale : 0.f;
        g = prob[c] * (dp - d_t[col]) * p.scale;
      }
      pds[r * kProbLd + col] = __float2bfloat16_rn(g);
    }
    __syncwarp();
    mma_acc_ab(acc_k, dk_ld, pds, kProbLd, qt, k_ld, qk, first, last);  // dK += dS^T Q
  }
  if (!w.active) return;
  __syncwarp();
  write_rows(dk + blk.h * qk, p.ldk, acc_k, dk_ld, base + warp_key0, base + T, qk, 1.f);
  write_rows(dv + blk.h * vd, p.ldv, acc_v, dv_ld, base + warp_key0, base + T, vd, 1.f);
}

}  // namespace kernels::attn_tc

// Largest dynamic shared memory of the three kernels for these head dims.
inline std::size_t attention_tc_shared_bytes(int qk, int vd) {
  namespace tc = kernels::attn_tc;
  return std::max({tc::ForwardSmem(qk, vd).bytes, tc::DqSmem(qk, vd).bytes,
                   tc::DkvSmem(qk, vd).bytes});
}

inline bool attention_tc_dims_ok(std::ptrdiff_t qk, std::ptrdiff_t vd) {
  const auto ok = [](std::ptrdiff_t d) {
    return d >= kernels::attn_tc::kFrag && d <= kernels::attn_tc::kMaxDim &&
           d % kernels::attn_tc::kFrag == 0;
  };
  return ok(qk) && ok(vd);
}

inline bool attention_tc_supported(const AttentionShape& a) {
  return attention_tc_dims_ok(a.qk_dim, a.v_dim) &&
         attention_tc_shared_bytes(static_cast<int>(a.qk_dim), static_cast<int>(a.v_dim)) <=
             Runtime::get().properties().sharedMemPerBlockOptin;
}

// Checked before the first launch, so a forced selection that cannot run fails before any
// output (dQ of a backward, say) is overwritten.
inline void attention_tc_require(const AttentionShape& a, const char* what) {
  require(attention_tc_dims_ok(a.qk_dim, a.v_dim), what,
          ": the tensor-core attention kernels (chosen by set_attention_kernel or "
          "ABLATE_CUDA_ATTENTION=tensor_core) need qk_dim and v_dim to be multiples of ",
          kernels::attn_tc::kFrag, " from ", kernels::attn_tc::kFrag, " to ",
          kernels::attn_tc::kMaxDim, ", got qk_dim ", a.qk_dim, " and v_dim ", a.v_dim,
          " (the fp32 kernels run any head dim up to ", kernels::kAttnMaxDim, ")");
  const std::size_t bytes =
      attention_tc_shared_bytes(static_cast<int>(a.qk_dim), static_cast<int>(a.v_dim));
  const std::size_t limit = Runtime::get().properties().sharedMemPerBlockOptin;
  require(bytes <= limit, what, ": the tensor-core attention kernels need ", bytes,
          " bytes of shared memory per block for qk_dim ", a.qk_dim, " and v_dim ", a.v_dim,
          ", this GPU allows ", limit, " (the fp32 kernels need less)");
}

// Every row of t, from its head columns on, starts 16-byte aligned (float4 staging): head
// offsets are multiples of 16 floats, so the base and the row stride decide.
inline bool attention_tc_rows_aligned(const Tensor& t) {
  return reinterpret_cast<std::uintptr_t>(t.data()) % 16 == 0 && t.cols() % 4 == 0;
}

inline void attention_tc_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const AttentionShape& a, double dropout_p,
                                 std::uint64_t key) {
  namespace tc = kernels::attn_tc;
  attention_tc_require(a, "attention_forward");
  const kernels::AttentionParams p =
      attention_params(q, k, v, out.cols(), a, dropout_p, key, tc::kRows);
  const bool vec4 = attention_tc_rows_aligned(q) && attention_tc_rows_aligned(k) &&
                    attention_tc_rows_aligned(v);
  const int qk = static_cast<int>(a.qk_dim), vd = static_cast<int>(a.v_dim);
  launch_attention_kernel(tc::forward, "attention_tc_forward", attention_grid(a, p), tc::kTcThreads,
                          tc::ForwardSmem(qk, vd).bytes, out.data(), probs.data(), q.data(),
                          k.data(), v.data(), p, vec4);
}

inline void attention_tc_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                  const Tensor& probs, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const AttentionShape& a, double dropout_p,
                                  std::uint64_t key) {
  namespace tc = kernels::attn_tc;
  attention_tc_require(a, "attention_backward");
  const kernels::AttentionParams p =
      attention_params(q, k, v, dout.cols(), a, dropout_p, key, tc::kRows);
  const bool vec4 = attention_tc_rows_aligned(q) && attention_tc_rows_aligned(k) &&
                    attention_tc_rows_aligned(v) && attention_tc_rows_aligned(dout);
  const int qk = static_cast<int>(a.qk_dim), vd = static_cast<int>(a.v_dim);
  // D per query row, from the dQ kernel to the dK/dV kernel (the fp32 kernels' slot: both run
  // in order on the one stream).
  float* d = scratch<float, 10>(static_cast<std::size_t>(probs.rows()));
  const unsigned grid = attention_grid(a, p);
  launch_attention_kernel(tc::backward_dq, "attention_tc_backward_dq", grid, tc::kTcThreads,
                          tc::DqSmem(qk, vd).bytes, dq.data(), d, dout.data(), probs.data(),
                          q.data(), k.data(), v.data(), p, vec4);
  launch_attention_kernel(tc::backward_dkv, "attention_tc_backward_dkv", grid, tc::kTcThreads,
                          tc::DkvSmem(qk, vd).bytes, dk.data(), dv.data(), dout.data(),
                          probs.data(), d, q.data(), k.data(), v.data(), p, vec4);
}

}  // namespace ablate::cuda
