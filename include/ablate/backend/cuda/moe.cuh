// Mixture-of-experts kernels on the device, with the names, argument order and semantics of
// cpu/moe.hpp: router activations (row softmax, sigmoid, noise), top-K and group-limited top-K
// selection, the gathers and scatters that move tokens between the [tokens, features]
// activations and each expert's contiguous batch, and the bookkeeping that groups routed slots
// by expert.
//
// Routing is stored as `Indices`, a device int32 array: for N tokens and K choices, entry
// n*K + k is the expert of token n's k-th choice (a "slot").  The dispatch plan (rows, slots)
// stays on the device; only the per-expert counts come to the host, once per routing: they size
// each expert's batch.  moe_expert_counts keeps the counts it copied next to the indices, so the
// dispatch plan of the same routing reuses them instead of copying again.
//
// Everything is deterministic: selection runs one thread per row with the CPU's tie-breaking,
// the dispatch plan is a chunked counting sort stable in slot order, reductions are fixed-order
// warp sums, and the scatter-adds rely on the rows of one expert's range being distinct (no
// atomics).
#pragma once

#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "ablate/backend/cuda/buffer.cuh"
#include "ablate/backend/cuda/device.cuh"
#include "ablate/backend/cuda/error.cuh"
#include "ablate/backend/cuda/launch.cuh"
#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/error.hpp"
#include "ablate/core/expert_selection.hpp"
#include "ablate/core/operand_checks.hpp"
#include "ablate/core/random.hpp"

namespace ablate::cuda {

// A device array of int32 (expert ids, token rows or slots).  The blocks only store it and pass
// it back; to_host / from_host are for tests and inspection.  Capacity only grows, like Tensor.
class Indices {
 public:
  Indices() = default;
  explicit Indices(std::size_t n) { resize(n); }
  Indices(const Indices& o) { assign(o); }
  Indices& operator=(const Indices& o) {
    if (this != &o) assign(o);
    return *this;
  }
  Indices(Indices&& o) noexcept
      : buffer_(std::move(o.buffer_)),
        size_(std::exchange(o.size_, 0)),
        counts_(std::move(o.counts_)),
        counted_(std::exchange(o.counted_, false)) {}
  Indices& operator=(Indices&& o) noexcept {
    if (this != &o) {
      buffer_ = std::move(o.buffer_);
      size_ = std::exchange(o.size_, 0);
      counts_ = std::move(o.counts_);
      counted_ = std::exchange(o.counted_, false);
    }
    return *this;
  }

  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  // Mutable access forgets the per-expert counts kept for the current contents.
  std::int32_t* data() {
    counted_ = false;
    return buffer_.data();
  }
  const std::int32_t* data() const { return buffer_.data(); }

  // Contents are unspecified after a resize that reallocates (as with Tensor).
  void resize(std::size_t n) {
    buffer_.reserve(n);
    size_ = n;
    counted_ = false;
  }

  std::vector<std::int32_t> to_host() const {
    std::vector<std::int32_t> v(size_);
    copy_to_host(v.data(), data(), size_);
    return v;
  }
  void from_host(const std::vector<std::int32_t>& v) {
    resize(v.size());
    copy_to_device(data(), v.data(), v.size());
  }

 private:
  friend struct MoEKernels;

  void assign(const Indices& o) {
    resize(o.size_);
    if (o.size_ > 0)
      ABLATE_CUDA_CHECK(cudaMemcpyAsync(buffer_.data(), o.buffer_.data(),
                                        o.size_ * sizeof(std::int32_t), cudaMemcpyDeviceToDevice,
                                        stream()));
    counts_ = o.counts_;
    counted_ = o.counted_;
  }

  DeviceBuffer<std::int32_t> buffer_;
  std::size_t size_ = 0;
  // Slots per expert of the current contents (valid while counted_), kept by moe_expert_counts.
  mutable std::vector<std::size_t> counts_;
  mutable bool counted_ = false;
};

namespace kernels::moe {

// ---- warp-per-row kernels ---------------------------------------------------------------------
// One warp per row, blockDim.x == kThreads.  Every lane of a warp walks the same rows, so the warp
// reductions inside are taken by full warps; a lane reads and writes only its own columns, and
// the reductions complete before any write, so outputs may alias inputs.

constexpr int kRowsPerBlock = kThreads / kWarp;

__device__ inline std::size_t warp_first_row() {
  return blockIdx.x * static_cast<std::size_t>(blockDim.x / kWarp) + threadIdx.x / kWarp;
}
__device__ inline std::size_t warp_row_stride() {
  return static_cast<std::size_t>(gridDim.x) * (blockDim.x / kWarp);
}

// y = softmax of each row of x, max-subtracted.
ABLATE_KERNEL void row_softmax(float* y, const float* x, std::size_t rows, std::size_t cols) {
  const std::size_t lane = threadIdx.x % kWarp;
  for (std::size_t r = warp_first_row(); r < rows; r += warp_row_stride()) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float m = -INFINITY;
    for (std::size_t c = lane; c < cols; c += kWarp) m = fmaxf(m, xr[c]);
    m = warp_max(m);
    float s = 0.f;
    for (std::size_t c = lane; c < cols; c += kWarp) s += expf(xr[c] - m);
    s = warp_sum(s);
    for (std::size_t c = lane; c < cols; c += kWarp) yr[c] = expf(xr[c] - m) / s;
  }
}

// dx = y * (dy - rowsum(dy * y))
ABLATE_KERNEL void row_softmax_backward(float* dx, const float* y, const float* dy,
                                        std::size_t rows, std::size_t cols) {
  const std::size_t lane = threadIdx.x % kWarp;
  for (std::size_t r = warp_first_row(); r < rows; r += warp_row_stride()) {
    const std::size_t o = r * cols;
    float dot = 0.f;
    for (std::size_t c = lane; c < cols; c += kWarp) dot += dy[o + c] * y[o + c];
    dot = warp_sum(dot);
    for (std::size_t c = lane; c < cols; c += kWarp) dx[o + c] = y[o + c] * (dy[o + c] - dot);
  }
}

// w = (g / (rowsum(g) + eps)) * scale
ABLATE_KERNEL void normalize_rows(float* w, const float* g, std::size_t rows, std::size_t cols,
                                  float eps, float scale) {
  const std::size_t lane = threadIdx.x % kWarp;
  for (std::size_t r = warp_first_row(); r < rows; r += warp_row_stride()) {
    const std::size_t o = r * cols;
    float s = 0.f;
    for (std::size_t c = lane; c < cols; c += kWarp) s += g[o + c];
    const float denom = warp_sum(s) + eps;
    for (std::size_t c = lane; c < cols; c += kWarp) w[o + c] = g[o + c] / denom * scale;
  }
}

// dg = ((dw - rowsum(dw * g) / D) / D) * scale with D = rowsum(g) + eps.
ABLATE_KERNEL void normalize_rows_backward(float* dg, const float* dw, const float* g,
                                           std::size_t rows, std::size_t cols, float eps,
                                           float scale) {
  const std::size_t lane = threadIdx.x % kWarp;
  for (std::size_t r = warp_first_row(); r < rows; r += warp_row_stride()) {
    const std::size_t o = r * cols;
    float s = 0.f, dot = 0.f;
    for (std::size_t c = lane; c < cols; c += kWarp) {
      s += g[o + c];
      dot += dw[o + c] * g[o + c];
    }
    const float denom = warp_sum(s) + eps;
    const float shift = warp_sum(dot) / denom;
    for (std::size_t c = lane; c < cols; c += kWarp) dg[o + c] = (dw[o + c] - shift) / denom * scale;
  }
}

// out[slots[i]] = x[rows[i]] . src[i] for i < n.
ABLATE_KERNEL void gather_row_dots(float* out, const float* x, const float* src,
                                   const std::int32_t* rows, const std::int32_t* slots,
                                   std::size_t n, std::size_t cols) {
  const std::size_t lane = threadIdx.x % kWarp;
  for (std::size_t i = warp_first_row(); i < n; i += warp_row_stride()) {
    const float* xr = x + static_cast<std::size_t>(rows[i]) * cols;
    const float* sr = src + i * cols;
    float d = 0.f;
    for (std::size_t c = lane; c < cols; c += kWarp) d += xr[c] * sr[c];
    d = warp_sum(d);
    if (lane == 0) out[slots[i]] = d;
  }
}

// ---- element-wise kernels ---------------------------------------------------------------------

ABLATE_KERNEL void sigmoid_forward(float* y, const float* x, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) y[i] = 1.f / (1.f + expf(-x[i]));
}
ABLATE_KERNEL void sigmoid_backward(float* dx, const float* dy, const float* y, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) dx[i] = dy[i] * y[i] * (1.f - y[i]);
}
ABLATE_KERNEL void add_normal_noise(float* x, std::size_t n, std::uint64_t key, double stddev) {
  ABLATE_GRID_STRIDE(i, n) x[i] += static_cast<float>(stddev * standard_normal(key, i));
}
// y[i] += row[i % cols] over the n = rows * cols entries of y.
ABLATE_KERNEL void add_row_broadcast(float* y, std::size_t n, std::size_t cols, const float* row) {
  ABLATE_GRID_STRIDE(i, n) y[i] += row[i % cols];
}


// out[i] = src[i / k, idx[i]] over the n = rows * k entries of out ([rows, k]; src [rows, cols]).
ABLATE_KERNEL void gather_columns(float* out, const float* src, const std::int32_t* idx,
                                  std::size_t n, std::size_t k, std::size_t cols) {
  ABLATE_GRID_STRIDE(i, n) out[i] = src[(i / k) * cols + static_cast<std::size_t>(idx[i])];
}
// out[i / k, idx[i]] = src[i] over the n = rows * k entries of src (out zeroed before).
ABLATE_KERNEL void scatter_columns(float* out, const float* src, const std::int32_t* idx,
                                   std::size_t n, std::size_t k, std::size_t cols) {
  ABLATE_GRID_STRIDE(i, n) out[(i / k) * cols + static_cast<std::size_t>(idx[i])] = src[i];
}

// out[i] = x[rows[i / cols], i % cols] over the n = count * cols entries of out.
ABLATE_KERNEL void gather_rows(float* out, const float* x, const std::int32_t* rows, std::size_t n,
                               std::size_t cols) {
  ABLATE_GRID_STRIDE(i, n) {
    const std::size_t r = i / cols;
    out[i] = x[static_cast<std::size_t>(rows[r]) * cols + (i - r * cols)];
  }
}
// out[i] = w[slots[i / cols]] * x[rows[i / cols], i % cols]
ABLATE_KERNEL void gather_rows_weighted(float* out, const float* x, const std::int32_t* rows,
                                        const std::int32_t* slots, const float* w, std::size_t n,
                                        std::size_t cols) {
  ABLATE_GRID_STRIDE(i, n) {
    const std::size_t r = i / cols;
    out[i] = w[slots[r]] * x[static_cast<std::size_t>(rows[r]) * cols + (i - r * cols)];
  }
}
// y[rows[i / cols], i % cols] += src[i]: the rows are distinct, so each entry of y has one writer.
ABLATE_KERNEL void scatter_add_rows(float* y, const float* src, const std::int32_t* rows,
                                    std::size_t n, std::size_t cols) {
  ABLATE_GRID_STRIDE(i, n) {
    const std::size_t r = i / cols;
    y[static_cast<std::size_t>(rows[r]) * cols + (i - r * cols)] += src[i];
  }
}
// y[rows[i / cols], i % cols] += w[slots[i / cols]] * src[i]
ABLATE_KERNEL void scatter_add_rows_weighted(float* y, const float* src, const std::int32_t* rows,
                                             const std::int32_t* slots, const float* w,
                                             std::size_t n, std::size_t cols) {
  ABLATE_GRID_STRIDE(i, n) {
    const std::size_t r = i / cols;
    y[static_cast<std::size_t>(rows[r]) * cols + (i - r * cols)] += w[slots[r]] * src[i];
  }
}

// out.flat[j] += delta[j]  (the balance-bias update)
ABLATE_KERNEL void add_vector(float* out, const float* delta, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) out[i] += delta[i];
}

// out[0, c] = (sum_r x[r, c]) / rows.  Block (kWarp, kMeanStripes): a thread owns a column and a
// stripe of rows, summed in double; the stripes are added in a fixed order (deterministic).
constexpr int kMeanStripes = 32;
ABLATE_KERNEL void column_means(float* out, const float* x, std::size_t rows, std::size_t cols) {
  __shared__ double part[kMeanStripes][kWarp];
  const std::size_t c = blockIdx.x * static_cast<std::size_t>(kWarp) + threadIdx.x;
  double acc = 0.0;
  if (c < cols)
    for (std::size_t r = threadIdx.y; r < rows; r += kMeanStripes) acc += x[r * cols + c];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double total = 0.0;
    for (int j = 0; j < kMeanStripes; ++j) total += part[j][threadIdx.x];
    out[c] = static_cast<float>(total) / static_cast<float>(rows);
  }
}

// ---- expert selection (one thread per row) ----------------------------------------------------

ABLATE_KERNEL void topk_rows(std::int32_t* idx, const float* scores, std::size_t rows, int cols,
                             int k) {
  ABLATE_GRID_STRIDE(r, rows)
  select_top(scores + r * static_cast<std::size_t>(cols), cols, k,
             idx + r * static_cast<std::size_t>(k));
}

// The CPU's group_limited_topk, one row per thread (ablate::group_limited_select).
ABLATE_KERNEL void group_limited_topk(std::int32_t* idx, float* masked, float* group_scores,
                                      const float* choice, std::size_t rows, int cols,
                                      int n_group, int topk_group, int k) {
  ABLATE_GRID_STRIDE(r, rows)
  group_limited_select(idx + r * static_cast<std::size_t>(k),
                       masked + r * static_cast<std::size_t>(cols),
                       group_scores + r * static_cast<std::size_t>(n_group),
                       choice + r * static_cast<std::size_t>(cols), cols, n_group, topk_group, k);
}

// ---- dispatch plan: a chunked counting sort, stable in slot order -----------------------------
// The slots are cut into chunks of kPlanChunk, one block each.  plan_count: counts[chunk, e] =
// slots of expert e in the chunk.  plan_scan (one block): offsets[e] = slots of experts < e, and
// counts[chunk, e] becomes the position of the chunk's first slot of e (offsets[e] plus the
// slots of e in earlier chunks).  plan_scatter: the thread of expert e walks its chunk in slot
// order, placing each of its slots at the next position.  Entries outside [0, experts) are
// counted nowhere and placed nowhere (the host sees offsets[experts] < slots and throws).

constexpr int kPlanChunk = 256;

// Loads the block's chunk of idx into shared memory; returns its length.  All threads call it.
__device__ inline int load_plan_chunk(std::int32_t* chunk, const std::int32_t* idx,
                                      std::size_t n_slots) {
  const std::size_t begin = blockIdx.x * static_cast<std::size_t>(kPlanChunk);
  const std::size_t left = n_slots - begin;
  const int len = left < static_cast<std::size_t>(kPlanChunk) ? static_cast<int>(left) : kPlanChunk;
  for (int j = threadIdx.x; j < len; j += blockDim.x) chunk[j] = idx[begin + j];
  __syncthreads();
  return len;
}

ABLATE_KERNEL void plan_count(std::int32_t* counts, const std::int32_t* idx, std::size_t n_slots,
                              int experts) {
  __shared__ std::int32_t chunk[kPlanChunk];
  const int len = load_plan_chunk(chunk, idx, n_slots);
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    std::int32_t n = 0;
    for (int j = 0; j < len; ++j) n += chunk[j] == e ? 1 : 0;
    counts[blockIdx.x * static_cast<std::size_t>(experts) + e] = n;
  }
}

ABLATE_KERNEL void plan_scan(std::int32_t* counts, std::int32_t* offsets, int chunks, int experts) {
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    std::int32_t total = 0;
    for (int c = 0; c < chunks; ++c) total += counts[static_cast<std::size_t>(c) * experts + e];
    offsets[e + 1] = total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int e = 0; e < experts; ++e) offsets[e + 1] += offsets[e];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    std::int32_t next = offsets[e];
    for (int c = 0; c < chunks; ++c) {
      std::int32_t& entry = counts[static_cast<std::size_t>(c) * experts + e];
      const std::int32_t n = entry;
      entry = next;
      next += n;
    }
  }
}

ABLATE_KERNEL void plan_scatter(std::int32_t* rows, std::int32_t* slots, const std::int32_t* starts,
                                const std::int32_t* idx, std::size_t n_slots, int experts, int k) {
  __shared__ std::int32_t chunk[kPlanChunk];
  const int len = load_plan_chunk(chunk, idx, n_slots);
  const std::size_t begin = blockIdx.x * static_cast<std::size_t>(kPlanChunk);
  for (int e = threadIdx.x; e < experts; e += blockDim.x) {
    std::int32_t p = starts[blockIdx.x * static_cast<std::size_t>(experts) + e];
    for (int j = 0; j < len; ++j) {
      if (chunk[j] != e) continue;
      const auto s = static_cast<std::int32_t>(begin + static_cast<std::size_t>(j));
      rows[p] = s / k;
      slots[p] = s;
      ++p;
    }
  }
}

}  // namespace kernels::moe

struct MoEKernels {
  using Tensor = cuda::Tensor;
  using Indices = cuda::Indices;

  // ---- router activations ----------------------------------------------------------------------

  // y = softmax over each row of x (max-subtracted).  y may alias x.
  static void row_softmax(Tensor& y, const Tensor& x) {
    y.resize(x.rows(), x.cols());
    moe_warp_rows("moe row_softmax", kernels::moe::row_softmax, y.numel(), rows_of(x), y.data(),
                  x.data(), rows_of(x), cols_of(x));
  }
  // dx = y * (dy - rowsum(dy * y)) for y = softmax(x).
  static void row_softmax_backward(Tensor& dx, const Tensor& y, const Tensor& dy) {
    dx.resize(y.rows(), y.cols());
    moe_warp_rows("moe row_softmax_backward", kernels::moe::row_softmax_backward, dx.numel(),
                  rows_of(y), dx.data(), y.data(), dy.data(), rows_of(y), cols_of(y));
  }

  // y = 1 / (1 + exp(-x))
  static void sigmoid_forward(Tensor& y, const Tensor& x) {
    y.resize(x.rows(), x.cols());
    moe_elementwise("moe sigmoid_forward", kernels::moe::sigmoid_forward, y.numel(), y.data(),
                    x.data(), y.numel());
  }
  // dx = dy * y * (1 - y) for y = sigmoid(x).
  static void sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
    dx.resize(y.rows(), y.cols());
    moe_elementwise("moe sigmoid_backward", kernels::moe::sigmoid_backward, dx.numel(), dx.data(),
                    dy.data(), y.data(), dx.numel());
  }

  // x[i] += stddev * normal(key, i): the CPU backend's counter-based stream.
  static void add_normal_noise(Tensor& x, std::uint64_t key, double stddev) {
    moe_elementwise("moe add_normal_noise", kernels::moe::add_normal_noise, x.numel(), x.data(),
                    x.numel(), key, stddev);
  }

  // y[r] += row (row is 1 x cols).
  static void add_row_broadcast(Tensor& y, const Tensor& row) {
    require(row.numel() >= cols_of(y), "moe add_row_broadcast: row has ", row.numel(),
            " entries, y has ", y.cols(), " columns");
    moe_elementwise("moe add_row_broadcast", kernels::moe::add_row_broadcast, y.numel(), y.data(),
                    y.numel(), cols_of(y), row.data());
  }

  // out (1 x cols) = mean over rows of x.
  static void column_means(Tensor& out, const Tensor& x) {
    out.resize(1, x.cols());
    if (x.cols() == 0) return;
    const dim3 block(kWarp, kernels::moe::kMeanStripes);
    const auto grid = static_cast<unsigned>((cols_of(x) + kWarp - 1) / kWarp);
    kernels::moe::column_means<<<grid, block, 0, stream()>>>(out.data(), x.data(), rows_of(x),
                                                             cols_of(x));
    ABLATE_CUDA_CHECK_LAUNCH("moe column_means");
  }

  // ---- expert selection ------------------------------------------------------------------------

  // idx[r*k + j] = column of the j-th largest entry of row r (ties: lower column first).
  static void topk_rows(Indices& idx, const Tensor& scores, std::ptrdiff_t k) {
    const std::ptrdiff_t n = scores.rows(), cols = scores.cols();
    require(k >= 0 && k <= cols && cols <= kIntMax, "moe topk_rows: k = ", k, " for ", cols,
            " columns");
    idx.resize(static_cast<std::size_t>(n * k));
    if (n * k == 0) return;
    moe_elementwise("moe topk_rows", kernels::moe::topk_rows, static_cast<std::size_t>(n),
                    idx.data(), scores.data(), static_cast<std::size_t>(n), static_cast<int>(cols),
                    static_cast<int>(k));
  }

  // DeepSeek-V3 / GLM4 group-limited selection on `choice` [N, E] split into n_group groups of
  // consecutive experts (see cpu/moe.hpp): `masked` receives the masked scores (entries of
  // dropped groups set to -inf), `group_scores` [N, n_group] the group scores.
  static void group_limited_topk(Indices& idx, Tensor& masked, Tensor& group_scores,
                                 const Tensor& choice, std::ptrdiff_t n_group,
                                 std::ptrdiff_t topk_group, std::ptrdiff_t k) {
    const std::ptrdiff_t n = choice.rows(), cols = choice.cols();
    require(n_group > 0 && cols >= n_group && cols % n_group == 0 && cols <= kIntMax,
            "moe group_limited_topk: n_group (", n_group, ") must divide the ", cols, " experts");
    require(k >= 0 && k <= cols, "moe group_limited_topk: k = ", k, " for ", cols, " experts");
    idx.resize(static_cast<std::size_t>(n * k));
    masked.resize(n, cols);
    group_scores.resize(n, n_group);
    if (n == 0) return;
    const auto clamp_int = [](std::ptrdiff_t v) {
      return static_cast<int>(v < 0 ? 0 : (v > kIntMax ? kIntMax : v));
    };
    moe_elementwise("moe group_limited_topk", kernels::moe::group_limited_topk,
                    static_cast<std::size_t>(n), idx.data(), masked.data(), group_scores.data(),
                    choice.data(), static_cast<std::size_t>(n), static_cast<int>(cols),
                    static_cast<int>(n_group), clamp_int(topk_group), static_cast<int>(k));
  }

  // out[r, j] = src[r, idx[r*k + j]]: out is [N, k].
  static void gather_columns(Tensor& out, const Tensor& src, const Indices& idx, std::ptrdiff_t k) {
    const std::ptrdiff_t n = src.rows();
    require(k >= 0 && idx.size() >= static_cast<std::size_t>(n * k),
            "moe gather_columns: ", idx.size(), " indices for ", n, " rows of ", k);
    out.resize(n, k);
    moe_elementwise("moe gather_columns", kernels::moe::gather_columns, out.numel(), out.data(),
                    src.data(), idx.data(), out.numel(), static_cast<std::size_t>(k), cols_of(src));
  }
  // out = zeros [N, cols]; out[r, idx[r*k + j]] = src[r, j].  The indices of a row are distinct.
  static void scatter_columns(Tensor& out, const Tensor& src, const Indices& idx, std::ptrdiff_t cols) {
    const std::ptrdiff_t n = src.rows(), k = src.cols();
    require(idx.size() >= src.numel(), "moe scatter_columns: ", idx.size(), " indices for ", n,
            " rows of ", k);
    out.resize(n, cols);
    if (out.numel() > 0)
      ABLATE_CUDA_CHECK(cudaMemsetAsync(out.data(), 0, out.numel() * sizeof(float), stream()));
    moe_elementwise("moe scatter_columns", kernels::moe::scatter_columns, src.numel(), out.data(),
                    src.data(), idx.data(), src.numel(), static_cast<std::size_t>(k),
                    static_cast<std::size_t>(cols));
  }

  // w = scale * g / (rowsum(g) + eps)
  static void normalize_rows(Tensor& w, const Tensor& g, double eps, double scale) {
    w.resize(g.rows(), g.cols());
    moe_warp_rows("moe normalize_rows", kernels::moe::normalize_rows, w.numel(), rows_of(g),
                  w.data(), g.data(), rows_of(g), cols_of(g), static_cast<float>(eps),
                  static_cast<float>(scale));
  }
  // Backward of normalize_rows: dg_j = scale * (dw_j / D - sum_k(dw_k g_k) / D^2).
  static void normalize_rows_backward(Tensor& dg, const Tensor& dw, const Tensor& g, double eps,
                                      double scale) {
    dg.resize(g.rows(), g.cols());
    moe_warp_rows("moe normalize_rows_backward", kernels::moe::normalize_rows_backward,
                  dg.numel(), rows_of(g), dg.data(), dw.data(), g.data(), rows_of(g), cols_of(g),
                  static_cast<float>(eps), static_cast<float>(scale));
  }

  // ---- dispatch --------------------------------------------------------------------------------

  // counts[e] = number of slots routed to expert e (host side): one device->host copy, kept with
  // idx so that moe_dispatch_plan of the same routing needs none.
  static void moe_expert_counts(std::vector<std::size_t>& counts, const Indices& idx,
                                std::size_t experts) {
    if (!(idx.counted_ && idx.counts_.size() == experts)) {
      const std::int32_t* offsets = plan_offsets(idx, experts);
      remember_counts(idx, offsets, experts);
    }
    counts = idx.counts_;
  }

  // Groups the slots by expert (a counting sort, stable in slot order): position p in
  // [offsets[e], offsets[e+1]) holds token rows[p] = slot / k and slot slots[p] of expert e,
  // slots ascending within an expert.  rows and slots stay on the device; offsets is host side.
  static void moe_dispatch_plan(Indices& rows, Indices& slots, std::vector<std::size_t>& offsets,
                                const Indices& idx, std::size_t experts, std::size_t k) {
    const std::size_t n_slots = idx.size();
    require(k > 0 && k <= static_cast<std::size_t>(kIntMax), "moe_dispatch_plan: k must be > 0");
    rows.resize(n_slots);
    slots.resize(n_slots);
    const bool cached = idx.counted_ && idx.counts_.size() == experts;
    const std::int32_t* device_offsets = plan_offsets(idx, experts);
    if (n_slots > 0) {
      const std::size_t chunks = plan_chunks(n_slots);
      kernels::moe::plan_scatter<<<static_cast<unsigned>(chunks), plan_threads(experts), 0,
                                   stream()>>>(rows.data(), slots.data(), plan_starts(), idx.data(),
                                               n_slots, static_cast<int>(experts),
                                               static_cast<int>(k));
      ABLATE_CUDA_CHECK_LAUNCH("moe plan_scatter");
    }
    if (!cached) remember_counts(idx, device_offsets, experts);
    offsets.assign(experts + 1, 0);
    for (std::size_t e = 0; e < experts; ++e) offsets[e + 1] = offsets[e] + idx.counts_[e];
  }

  // out[i] = x[rows[begin + i]] for i < count.
  static void gather_rows(Tensor& out, const Tensor& x, const Indices& rows, std::size_t begin,
                          std::size_t count) {
    require_range("moe gather_rows", rows, begin, count);
    out.resize(static_cast<std::ptrdiff_t>(count), x.cols());
    moe_elementwise("moe gather_rows", kernels::moe::gather_rows, out.numel(), out.data(),
                    x.data(), rows.data() + begin, out.numel(), cols_of(x));
  }
  // out[i] = weights.flat[slots[begin + i]] * x[rows[begin + i]]
  static void gather_rows_weighted(Tensor& out, const Tensor& x, const Indices& rows,
                                   const Indices& slots, const Tensor& weights, std::size_t begin,
                                   std::size_t count) {
    require_range("moe gather_rows_weighted", rows, begin, count);
    require_range("moe gather_rows_weighted", slots, begin, count);
    out.resize(static_cast<std::ptrdiff_t>(count), x.cols());
    moe_elementwise("moe gather_rows_weighted", kernels::moe::gather_rows_weighted, out.numel(),
                    out.data(), x.data(), rows.data() + begin, slots.data() + begin,
                    weights.data(), out.numel(), cols_of(x));
  }
  // y[rows[begin + i]] += src[i].  Within one expert's range the rows are distinct.
  static void scatter_add_rows(Tensor& y, const Tensor& src, const Indices& rows, std::size_t begin) {
    require_range("moe scatter_add_rows", rows, begin, rows_of(src));
    checks::same_columns(y, src, "moe scatter_add_rows", "y", "src");
    moe_elementwise("moe scatter_add_rows", kernels::moe::scatter_add_rows, src.numel(), y.data(),
                    src.data(), rows.data() + begin, src.numel(), cols_of(src));
  }
  // y[rows[begin + i]] += weights.flat[slots[begin + i]] * src[i]: the weighted combine.
  static void scatter_add_rows_weighted(Tensor& y, const Tensor& src, const Indices& rows,
                                        const Indices& slots, const Tensor& weights,
                                        std::size_t begin) {
    require_range("moe scatter_add_rows_weighted", rows, begin, rows_of(src));
    require_range("moe scatter_add_rows_weighted", slots, begin, rows_of(src));
    checks::same_columns(y, src, "moe scatter_add_rows_weighted", "y", "src");
    moe_elementwise("moe scatter_add_rows_weighted", kernels::moe::scatter_add_rows_weighted,
                    src.numel(), y.data(), src.data(), rows.data() + begin, slots.data() + begin,
                    weights.data(), src.numel(), cols_of(src));
  }
  // out.flat[slots[begin + i]] = x[rows[begin + i]] . src[i]: the gradient of the combine
  // weights (out is [N, K] and keeps its other entries).
  static void gather_row_dots(Tensor& out, const Tensor& x, const Tensor& src, const Indices& rows,
                              const Indices& slots, std::size_t begin) {
    require_range("moe gather_row_dots", rows, begin, rows_of(src));
    require_range("moe gather_row_dots", slots, begin, rows_of(src));
    moe_warp_rows("moe gather_row_dots", kernels::moe::gather_row_dots, rows_of(src),
                  rows_of(src), out.data(), x.data(), src.data(), rows.data() + begin,
                  slots.data() + begin, rows_of(src), cols_of(src));
  }

  // Auxiliary-loss-free balancing: bias[e] += rate * sign(mean(load) - load[e]).  The signs are
  // worked out on the host (the loads are host side) and added on the device.
  static void moe_balance_bias(Tensor& bias, const std::vector<std::size_t>& loads, double rate) {
    if (loads.empty()) return;
    require(bias.numel() >= loads.size(), "moe_balance_bias: ", loads.size(),
            " loads for a bias of ", bias.numel());
    double total = 0;
    for (std::size_t l : loads) total += static_cast<double>(l);
    const double mean = total / static_cast<double>(loads.size());
    std::vector<float> delta(loads.size());
    for (std::size_t e = 0; e < loads.size(); ++e) {
      const double gap = mean - static_cast<double>(loads[e]);
      const double sign = gap > 0 ? 1.0 : (gap < 0 ? -1.0 : 0.0);
      delta[e] = static_cast<float>(rate * sign);
    }
    float* device_delta = scratch<float, 22>(delta.size());
    upload<float, 36>(device_delta, delta.data(), delta.size());
    moe_elementwise("moe balance_bias", kernels::moe::add_vector, delta.size(), bias.data(),
                    static_cast<const float*>(device_delta), delta.size());
  }

 private:
  static constexpr std::ptrdiff_t kIntMax = std::numeric_limits<std::int32_t>::max();

  static std::size_t rows_of(const Tensor& t) { return static_cast<std::size_t>(t.rows()); }
  static std::size_t cols_of(const Tensor& t) { return static_cast<std::size_t>(t.cols()); }

  static void require_range(const char* what, const Indices& idx, std::size_t begin,
                            std::size_t count) {
    require(begin <= idx.size() && count <= idx.size() - begin, what, ": entries [", begin, ", ",
            begin + count, ") of ", idx.size());
  }

  // Element-wise launch over n elements (nothing to do for n == 0).
  template <class... Params, class... Args>
  static void moe_elementwise(const char* what, void (*kernel)(Params...), std::size_t n,
                              Args... args) {
    if (n == 0) return;
    kernel<<<blocks_for(n), kThreads, 0, stream()>>>(args...);
    ABLATE_CUDA_CHECK_LAUNCH(what);
  }
  // Warp-per-row launch over `rows` rows (nothing to do when the tensor has no entries).
  template <class... Params, class... Args>
  static void moe_warp_rows(const char* what, void (*kernel)(Params...), std::size_t numel,
                            std::size_t rows, Args... args) {
    if (numel == 0 || rows == 0) return;
    kernel<<<blocks_for(rows, kernels::moe::kRowsPerBlock), kThreads, 0, stream()>>>(args...);
    ABLATE_CUDA_CHECK_LAUNCH(what);
  }

  // ---- dispatch plan helpers ----

  static std::size_t plan_chunks(std::size_t n_slots) {
    return (n_slots + kernels::moe::kPlanChunk - 1) / kernels::moe::kPlanChunk;
  }
  // One thread per expert in the counting kernels, a whole number of warps, at most kThreads.
  static unsigned plan_threads(std::size_t experts) {
    const std::size_t warps = (experts + kWarp - 1) / kWarp;
    const std::size_t threads = warps * kWarp;
    return static_cast<unsigned>(threads < kWarp ? kWarp : (threads > kThreads ? kThreads : threads));
  }
  // counts[chunk, e], then the start position of each (chunk, expert) (scratch slot 20).
  static std::int32_t* plan_starts(std::size_t n = 0) { return scratch<std::int32_t, 20>(n); }

  // Counts idx per chunk and expert and scans: returns the device offsets [experts + 1] (scratch
  // slot 21) and leaves the per-(chunk, expert) start positions in plan_starts().
  static const std::int32_t* plan_offsets(const Indices& idx, std::size_t experts) {
    const std::size_t n_slots = idx.size();
    require(n_slots <= static_cast<std::size_t>(kIntMax) &&
                experts < static_cast<std::size_t>(kIntMax),
            "moe dispatch: ", n_slots, " slots over ", experts, " experts exceed the int32 range");
    std::int32_t* offsets = scratch<std::int32_t, 21>(experts + 1);
    const std::size_t chunks = plan_chunks(n_slots);
    std::int32_t* starts = plan_starts(chunks * experts);
    const unsigned threads = plan_threads(experts);
    if (chunks > 0 && experts > 0) {
      kernels::moe::plan_count<<<static_cast<unsigned>(chunks), threads, 0, stream()>>>(
          starts, idx.data(), n_slots, static_cast<int>(experts));
      ABLATE_CUDA_CHECK_LAUNCH("moe plan_count");
    }
    kernels::moe::plan_scan<<<1, kThreads, 0, stream()>>>(starts, offsets, static_cast<int>(chunks),
                                                          static_cast<int>(experts));
    ABLATE_CUDA_CHECK_LAUNCH("moe plan_scan");
    return offsets;
  }

  // Copies the device offsets to the host (the one device->host copy of a routing), checks that
  // every slot named an expert in [0, experts) and keeps the counts with idx.
  static void remember_counts(const Indices& idx, const std::int32_t* device_offsets,
                              std::size_t experts) {
    std::vector<std::int32_t> host(experts + 1);
    copy_to_host(host.data(), device_offsets, host.size());
    require(static_cast<std::size_t>(host[experts]) == idx.size(), "moe dispatch: ",
            idx.size() - static_cast<std::size_t>(host[experts]), " of ", idx.size(),
            " routing indices lie outside [0, ", experts, ")");
    idx.counts_.resize(experts);
    for (std::size_t e = 0; e < experts; ++e)
      idx.counts_[e] = static_cast<std::size_t>(host[e + 1] - host[e]);
    idx.counted_ = true;
  }
};

}  // namespace ablate::cuda
