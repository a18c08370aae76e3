// Token embedding lookup (scaled) and its scatter-add backward.  The ids live on the host (as in
// the CPU API) and are copied to the device per call.
//
// The backward is deterministic without atomics: the host sorts the rows by id (a stable
// counting sort, so each id's rows stay in ascending order), and one thread block per distinct
// id adds its rows into the table row in that order, exactly the CPU backend's order of
// additions for that row.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "ablate/backend/cuda/tensor.cuh"
#include "ablate/core/error.hpp"
#include "ablate/core/tokens.hpp"

namespace ablate::cuda {

namespace kernels::embed {

// y[r, c] = scale * table[ids[r], c]
ABLATE_KERNEL void forward(float* y, const std::int32_t* ids, const float* table, std::ptrdiff_t cols,
                           std::size_t n, float scale) {
  ABLATE_GRID_STRIDE(i, n) {
    const auto r = static_cast<std::ptrdiff_t>(i) / cols, c = static_cast<std::ptrdiff_t>(i) % cols;
    y[i] = __fmul_rn(scale, table[static_cast<std::ptrdiff_t>(ids[r]) * cols + c]);
  }
}

// Block k: table[ids[k]] += scale * dy[rows[j]] for j in [starts[k], starts[k + 1]), in order.
ABLATE_KERNEL void backward(float* dtable, const std::int32_t* rows, const std::int32_t* starts,
                            const std::int32_t* ids, const float* dy, std::ptrdiff_t cols, float scale) {
  const std::int32_t begin = starts[blockIdx.x], end = starts[blockIdx.x + 1];
  float* out = dtable + static_cast<std::ptrdiff_t>(ids[blockIdx.x]) * cols;
  for (std::ptrdiff_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = out[c];
    for (std::int32_t j = begin; j < end; ++j)
      acc = __fadd_rn(acc, __fmul_rn(scale, dy[static_cast<std::ptrdiff_t>(rows[j]) * cols + c]));
    out[c] = acc;
  }
}

// TensorKernels::launch for this kernel set (see activation.cuh).
struct Elementwise : TensorKernels {
  using TensorKernels::launch;
};

}  // namespace kernels::embed

struct EmbeddingKernels {
  using Tensor = cuda::Tensor;

  // y[r] = scale * table[ids[r]];  `ids` is a host array of n ids.
  static void embedding_forward(Tensor& y, const std::int32_t* ids, std::ptrdiff_t n,
                                const Tensor& table, double scale) {
    const std::ptrdiff_t d = table.cols();
    check_ids(ids, static_cast<std::size_t>(n), static_cast<std::size_t>(table.rows()),
              "ablate::CUDA embedding_forward: token id");
    y.resize(n, d);
    if (n == 0 || d == 0) return;
    std::int32_t* device_ids = scratch<std::int32_t, 32>(static_cast<std::size_t>(n));
    upload<std::int32_t, 32>(device_ids, ids, static_cast<std::size_t>(n));
    kernels::embed::Elementwise::launch(kernels::embed::forward, y.numel(), y.data(), device_ids,
                                        table.data(), d, y.numel(), static_cast<float>(scale));
  }

  // dtable[ids[r]] += scale * dy[r], repeated ids adding in row order;  `ids` is a host array
  // of dy.rows() ids.
  static void embedding_backward(Tensor& dtable, const std::int32_t* ids, const Tensor& dy,
                                 double scale) {
    const std::ptrdiff_t n = dy.rows(), d = dy.cols(), vocab = dtable.rows();
    require(dtable.cols() == d, "ablate::CUDA embedding_backward: dy has ", d,
            " columns, the table gradient ", dtable.cols());
    check_ids(ids, static_cast<std::size_t>(n), static_cast<std::size_t>(vocab),
              "ablate::CUDA embedding_backward: token id");
    if (n == 0 || d == 0) return;
    // Counting sort of the rows by id, laid out as [rows by id: n | segment starts: u + 1 |
    // segment ids: u] for the u distinct ids.
    std::vector<std::int32_t> next(static_cast<std::size_t>(vocab), 0);
    for (std::ptrdiff_t r = 0; r < n; ++r) ++next[static_cast<std::size_t>(ids[r])];
    const auto distinct = static_cast<std::ptrdiff_t>(
        std::count_if(next.begin(), next.end(), [](std::int32_t k) { return k > 0; }));
    std::vector<std::int32_t> plan(static_cast<std::size_t>(n + 2 * distinct + 1));
    std::int32_t* rows = plan.data();
    std::int32_t* starts = rows + n;
    std::int32_t* segment_ids = starts + distinct + 1;
    std::int32_t at = 0, k = 0;
    for (std::ptrdiff_t id = 0; id < vocab; ++id) {
      const std::int32_t count = next[static_cast<std::size_t>(id)];
      if (count == 0) continue;
      starts[k] = at;
      segment_ids[k] = static_cast<std::int32_t>(id);
      ++k;
      next[static_cast<std::size_t>(id)] = at;  // now the next free slot of this id
      at += count;
    }
    starts[distinct] = at;
    for (std::ptrdiff_t r = 0; r < n; ++r) rows[next[static_cast<std::size_t>(ids[r])]++] = static_cast<std::int32_t>(r);

    std::int32_t* device_plan = scratch<std::int32_t, 33>(plan.size());
    upload<std::int32_t, 33>(device_plan, plan.data(), plan.size());
    const auto threads = static_cast<int>(std::clamp<std::ptrdiff_t>((d + kWarp - 1) / kWarp * kWarp, kWarp, kThreads));
    kernels::embed::backward<<<static_cast<unsigned>(distinct), threads, 0, stream()>>>(
        dtable.data(), device_plan, device_plan + n, device_plan + n + distinct + 1, dy.data(), d,
        static_cast<float>(scale));
    ABLATE_CUDA_CHECK_LAUNCH("embedding_backward");
  }
};

}  // namespace ablate::cuda
