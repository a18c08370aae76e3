// Row-major GEMMs on cuBLASLt: C[M,N] = alpha * op(A) op(B) + beta * C (+ bias[N] per row),
// bf16 operands, fp32 accumulation and fp32 C.  The fp32 operands are rounded to bf16 on the
// way in (one pass each, into reused scratch buffers).
//
// cuBLASLt is column-major; a row-major X is the column-major X^T, so C^T = op(B)^T op(A)^T is
// computed with B first.  The bias epilogue then adds one value per column-major row, which is
// one per output feature.  Descriptors and the heuristic's algorithm are cached per shape and
// per operand alignment, up to 16 bytes (an algorithm chosen for 16-byte aligned operands may
// not run on a view that starts mid-row).
// Shapes cuBLASLt finds no algorithm for (tiny, odd leading dimensions) run a tiled SIMT kernel
// on the same bf16 operands.  Batched (batch > 1), each operand holds `batch` matrices one
// after another (a stack: matrix g of A starts m k elements after matrix g - 1) and one strided
// batched GEMM computes all the products.
#pragma once

#include <cublasLt.h>
#include <cuda_bf16.h>

#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <map>
#include <tuple>
#include <utility>

#include "ablate/backend/cuda/buffer.cuh"
#include "ablate/backend/cuda/launch.cuh"
#include "ablate/core/error.hpp"

namespace ablate::cuda {

namespace kernels {

ABLATE_KERNEL void to_bf16(__nv_bfloat16* y, const float* x, std::size_t n) {
  ABLATE_GRID_STRIDE(i, n) y[i] = __float2bfloat16_rn(x[i]);
}

// Fallback GEMM, 16x16 tiles.  A is [M,K] (or [K,M] when ta), B is [K,N] (or [N,K] when tb);
// matrix z of a batch over grid.z.  64-bit indices (an LM-head operand has more than 2^31
// elements); the row tiles are strided over grid.y and the batch over grid.z, each limited to
// 65535 blocks.
constexpr int kGemmTile = 16;
constexpr unsigned kGemmMaxRowBlocks = 65535;
ABLATE_KERNEL void gemm_tiled(float* c, const __nv_bfloat16* a, const __nv_bfloat16* b,
                              std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, bool ta,
                              bool tb, float alpha, float beta, const float* bias,
                              const float* c_in, std::ptrdiff_t batch) {
  __shared__ float as[kGemmTile][kGemmTile + 1];
  __shared__ float bs[kGemmTile][kGemmTile + 1];
  const std::ptrdiff_t col = blockIdx.x * static_cast<std::ptrdiff_t>(kGemmTile) + threadIdx.x;
  for (std::ptrdiff_t z = blockIdx.z; z < batch; z += gridDim.z) {
    const __nv_bfloat16* az = a + z * m * k;
    const __nv_bfloat16* bz = b + z * k * n;
    for (std::ptrdiff_t row0 = blockIdx.y * static_cast<std::ptrdiff_t>(kGemmTile); row0 < m;
         row0 += static_cast<std::ptrdiff_t>(gridDim.y) * kGemmTile) {
      const std::ptrdiff_t row = row0 + threadIdx.y;
      float acc = 0.f;
      for (std::ptrdiff_t t = 0; t < k; t += kGemmTile) {
        const std::ptrdiff_t ak = t + threadIdx.x, bk = t + threadIdx.y;
        as[threadIdx.y][threadIdx.x] =
            row < m && ak < k ? __bfloat162float(ta ? az[ak * m + row] : az[row * k + ak]) : 0.f;
        bs[threadIdx.y][threadIdx.x] =
            col < n && bk < k ? __bfloat162float(tb ? bz[col * k + bk] : bz[bk * n + col]) : 0.f;
        __syncthreads();
        for (int j = 0; j < kGemmTile; ++j) acc += as[threadIdx.y][j] * bs[j][threadIdx.x];
        __syncthreads();
      }
      if (row < m && col < n) {
        const std::ptrdiff_t at = z * m * n + row * n + col;
        float v = alpha * acc + (bias != nullptr ? bias[col] : 0.f);
        if (beta != 0.f) v += beta * c_in[at];
        c[at] = v;
      }
    }
  }
}

}  // namespace kernels

class Gemm {
 public:
  static Gemm& get() {
    static Gemm gemm;
    return gemm;
  }
  Gemm(const Gemm&) = delete;
  Gemm& operator=(const Gemm&) = delete;

  // c = alpha op(a) op(b) + beta c_in (+ bias per column): c is [m, n] row-major; a is [m, k]
  // ([k, m] if ta); b is [k, n] ([n, k] if tb); c_in, shaped like c, is c itself when null.
  // With batch > 1 every operand is a stack of `batch` such matrices (no bias).
  void run(float* c, const float* a, bool ta, const float* b, bool tb, std::ptrdiff_t m,
           std::ptrdiff_t n, std::ptrdiff_t k, float alpha, float beta, const float* bias,
           const float* c_in = nullptr, std::ptrdiff_t batch = 1) {
    if (m == 0 || n == 0 || batch == 0) return;
    const auto a_n = static_cast<std::size_t>(batch * m * k), b_n = static_cast<std::size_t>(batch * k * n);
    __nv_bfloat16* a16 = scratch<__nv_bfloat16, 0>(a_n > 0 ? a_n : 1);
    convert(a16, a, a_n);
    if (b == a && b_n == a_n) {  // X X^T, A A (Newton-Schulz): one rounding serves both
      run_bf16(c, a16, ta, a16, tb, m, n, k, alpha, beta, bias, c_in, batch);
      return;
    }
    __nv_bfloat16* b16 = scratch<__nv_bfloat16, 1>(b_n > 0 ? b_n : 1);
    convert(b16, b, b_n);
    run_bf16(c, a16, ta, b16, tb, m, n, k, alpha, beta, bias, c_in, batch);
  }

  // The same on operands already in bf16.
  void run_bf16(float* c, const __nv_bfloat16* a16, bool ta, const __nv_bfloat16* b16, bool tb,
                std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, float alpha, float beta,
                const float* bias, const float* c_in = nullptr, std::ptrdiff_t batch = 1) {
    if (m == 0 || n == 0 || batch == 0) return;
    require(batch == 1 || bias == nullptr, "Gemm: a batched GEMM takes no bias");
    if (c_in == nullptr) c_in = c;
    const Plan* plan = nullptr;
    // The bias epilogue reads the bias in 16-byte vectors; a bias that starts elsewhere (a view
    // into a larger tensor) takes the tiled kernel.
    const bool bias_aligned = reinterpret_cast<std::uintptr_t>(bias) % 16 == 0;
    if (k > 0 && bias_aligned) {
      // cuBLASLt's X is b, its Y is a (see make_plan); a batch's matrices start a whole
      // matrix apart, which also bounds their alignment.
      const std::ptrdiff_t step = batch > 1 ? 1 : 0;
      const Alignments al{alignment(b16, tb ? k : n, 2, step * k * n),
                          alignment(a16, ta ? m : k, 2, step * m * k),
                          alignment(c_in, n, 4, step * m * n), alignment(c, n, 4, step * m * n)};
      plan = find_plan(m, n, k, ta, tb, bias != nullptr, al, batch);
    }
    if (plan == nullptr) {
      const dim3 block(kernels::kGemmTile, kernels::kGemmTile);
      const std::ptrdiff_t row_tiles = (m + kernels::kGemmTile - 1) / kernels::kGemmTile;
      const dim3 grid(static_cast<unsigned>((n + kernels::kGemmTile - 1) / kernels::kGemmTile),
                      static_cast<unsigned>(std::min<std::ptrdiff_t>(row_tiles, kernels::kGemmMaxRowBlocks)),
                      static_cast<unsigned>(std::min<std::ptrdiff_t>(batch, kernels::kGemmMaxRowBlocks)));
      kernels::gemm_tiled<<<grid, block, 0, stream()>>>(c, a16, b16, m, n, k, ta, tb, alpha, beta,
                                                        bias, c_in, batch);
      ABLATE_CUDA_CHECK_LAUNCH("gemm_tiled");
      return;
    }
    if (bias != nullptr)
      ABLATE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(plan->op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof(bias)));
    Runtime& rt = Runtime::get();
    // C (c_in) and D (c) share one layout; C == D is cuBLASLt's in-place case.
    ABLATE_CUDA_CHECK(cublasLtMatmul(rt.lt(), plan->op, &alpha, b16, plan->x, a16, plan->y, &beta,
                                     c_in, plan->d, c, plan->d, &plan->algo, rt.workspace(),
                                     Runtime::kWorkspaceBytes, stream()));
  }

  // Rounds n fp32 values to bf16.
  static void convert(__nv_bfloat16* dst, const float* src, std::size_t n) {
    if (n == 0) return;
    kernels::to_bf16<<<blocks_for(n), kThreads, 0, stream()>>>(dst, src, n);
    ABLATE_CUDA_CHECK_LAUNCH("to_bf16");
  }

  // Number of distinct shapes planned so far (each costs one heuristic query).
  std::size_t plans() const { return plans_.size(); }

 private:
  // One shape's descriptors and algorithm; owns the descriptors (also when make_plan throws
  // half-way).
  struct Plan {
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t x = nullptr, y = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
    bool usable = false;

    Plan() = default;
    Plan(Plan&& o) noexcept
        : op(std::exchange(o.op, nullptr)),
          x(std::exchange(o.x, nullptr)),
          y(std::exchange(o.y, nullptr)),
          d(std::exchange(o.d, nullptr)),
          algo(o.algo),
          usable(o.usable) {}
    Plan& operator=(Plan&&) = delete;
    ~Plan() {
      if (x != nullptr) (void)cublasLtMatrixLayoutDestroy(x);
      if (y != nullptr) (void)cublasLtMatrixLayoutDestroy(y);
      if (d != nullptr) (void)cublasLtMatrixLayoutDestroy(d);
      if (op != nullptr) (void)cublasLtMatmulDescDestroy(op);
    }
  };
  // The byte alignments the heuristic may assume of cuBLASLt's X, Y, C and D.
  struct Alignments {
    std::uint32_t x, y, c, d;
    auto tie() const { return std::tuple{x, y, c, d}; }
  };
  // Everything the descriptors and the heuristic's choice depend on (beta does not, and the
  // heuristic sees C and D only through their layout and alignment).
  using Key = std::tuple<std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, bool, bool, bool,
                         std::tuple<std::uint32_t, std::uint32_t, std::uint32_t, std::uint32_t>,
                         std::ptrdiff_t>;

  // The runtime first, so that it outlives this singleton's descriptors.
  Gemm() { (void)Runtime::get(); }

  // The largest power of two up to 16 bytes that divides the operand's start address, its row
  // pitch (ld elements of elem bytes) and its batch stride (elements; 0 when not batched):
  // what every row of every matrix of it is aligned to.  16 bytes is the most a cuBLASLt kernel
  // asks for; a higher cap would let the pool's placement of a tensor pick the algorithm, and
  // with it the rounding, so that two runs of one model could differ in their last bits.
  static std::uint32_t alignment(const void* p, std::ptrdiff_t ld, std::size_t elem,
                                 std::ptrdiff_t batch_stride = 0) {
    const auto address = reinterpret_cast<std::uintptr_t>(p);
    const auto pitch = static_cast<std::size_t>(ld) * elem;
    const auto stride = static_cast<std::size_t>(batch_stride) * elem;
    std::uint32_t a = 16;
    while (a > elem && (address % a != 0 || pitch % a != 0 || stride % a != 0)) a /= 2;
    return a;
  }

  // The plan for this shape, alignment and batch, or null when cuBLASLt has no algorithm for it.
  const Plan* find_plan(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, bool ta, bool tb,
                        bool bias, const Alignments& al, std::ptrdiff_t batch) {
    const Key key{m, n, k, ta, tb, bias, al.tie(), batch};
    auto it = plans_.find(key);
    if (it == plans_.end())
      it = plans_.emplace(key, make_plan(m, n, k, ta, tb, bias, al, batch)).first;
    return it->second.usable ? &it->second : nullptr;
  }

  static Plan make_plan(std::ptrdiff_t m, std::ptrdiff_t n, std::ptrdiff_t k, bool ta, bool tb,
                        bool bias, const Alignments& al, std::ptrdiff_t batch) {
    Plan p;
    ABLATE_CUDA_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    // Column-major view: X = B^T-buffer (first operand), Y = A^T-buffer (second operand).
    const cublasOperation_t op_x = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_y = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    ABLATE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_x, sizeof(op_x)));
    ABLATE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_y, sizeof(op_y)));
    if (bias) {
      const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
      ABLATE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                       &epilogue, sizeof(epilogue)));
      const cudaDataType_t bias_type = CUDA_R_32F;
      ABLATE_CUDA_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                       &bias_type, sizeof(bias_type)));
    }
    // Row-major B is [k, n] ([n, k] when tb): column-major [n, k] ([k, n]), leading dim = its cols.
    const auto u = [](std::ptrdiff_t v) { return static_cast<std::uint64_t>(v); };
    ABLATE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&p.x, CUDA_R_16BF, tb ? u(k) : u(n), tb ? u(n) : u(k),
                                                 static_cast<std::int64_t>(tb ? k : n)));
    ABLATE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&p.y, CUDA_R_16BF, ta ? u(m) : u(k), ta ? u(k) : u(m),
                                                 static_cast<std::int64_t>(ta ? m : k)));
    ABLATE_CUDA_CHECK(cublasLtMatrixLayoutCreate(&p.d, CUDA_R_32F, u(n), u(m), static_cast<std::int64_t>(n)));
    if (batch > 1) {  // strided batch: each layout's matrices one whole matrix apart
      const auto count = static_cast<std::int32_t>(batch);
      const std::pair<cublasLtMatrixLayout_t, std::int64_t> strided[] = {
          {p.x, static_cast<std::int64_t>(k * n)},
          {p.y, static_cast<std::int64_t>(m * k)},
          {p.d, static_cast<std::int64_t>(m * n)}};
      for (const auto& [layout, stride] : strided) {
        ABLATE_CUDA_CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                                                           &count, sizeof(count)));
        ABLATE_CUDA_CHECK(cublasLtMatrixLayoutSetAttribute(
            layout, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
      }
    }

    struct Preference {
      cublasLtMatmulPreference_t p = nullptr;
      ~Preference() {
        if (p != nullptr) (void)cublasLtMatmulPreferenceDestroy(p);
      }
    } preference;
    ABLATE_CUDA_CHECK(cublasLtMatmulPreferenceCreate(&preference.p));
    cublasLtMatmulPreference_t pref = preference.p;
    const std::size_t ws = Runtime::kWorkspaceBytes;
    ABLATE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    ABLATE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al.x, sizeof(al.x)));
    ABLATE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al.y, sizeof(al.y)));
    ABLATE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al.c, sizeof(al.c)));
    ABLATE_CUDA_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al.d, sizeof(al.d)));

    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(
        Runtime::get().lt(), p.op, p.x, p.y, p.d, p.d, pref, 1, &result, &found);
    if (status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) {
      p.algo = result.algo;
      p.usable = true;
    } else if (status != CUBLAS_STATUS_NOT_SUPPORTED && status != CUBLAS_STATUS_SUCCESS) {
      check(status, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
    }
    return p;
  }

  std::map<Key, Plan> plans_;
};

// Shorthand for the common case.
inline void gemm(float* c, const float* a, bool ta, const float* b, bool tb, std::ptrdiff_t m,
                 std::ptrdiff_t n, std::ptrdiff_t k, float alpha = 1.f, float beta = 0.f,
                 const float* bias = nullptr) {
  Gemm::get().run(c, a, ta, b, tb, m, n, k, alpha, beta, bias);
}

}  // namespace ablate::cuda
