// RoPE and the fused (flash-style) attention kernels of the CUDA backend against the CPU
// backend on the same random inputs: both RoPE layouts forward and inverse; attention output
// and all three gradients, causal and not, qk_dim == v_dim (MHA) and qk_dim != v_dim (MLA),
// sequence lengths that are not multiples of the kernels' tiles and blocks, dropout off and on
// (the GPU draws exactly the CPU's mask), tensors wider than their heads and peaked softmax
// rows; plus causality, determinism and bad input.  Both kernel sets: the fp32 ones (selected
// explicitly, AttentionKernelScope) and the tensor-core ones, also each one's saved state
// feeding the other's backward, and the kernel selection.
//
// Tolerances.  fp32 kernels: both sides compute in fp32 (never rounding to bf16), so the results
// differ only by summation order and exp/log rounding: kFp32Tolerance (1e-5 relative in norm; a
// host emulation of these kernels measured <= 4e-7).  Tensor-core kernels: Q, K, V, dO, P and dS
// are rounded to bf16 (8 significant bits) as matrix operands, and each gradient goes through two
// chained products; a host emulation with the same tiles and rounding points measured at most
// 3.5e-3 on the output and 4.7e-3 on the gradients over these cases (the tensor-core path's
// only remaining differences are __expf and the accumulation order inside an mma), so
// kTensorCoreTolerance = 2e-2 leaves a factor of 4.  RoPE uses the CPU's double angles and
// unfused float rotation, so it matches to 1e-6.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_test_util.cuh"

using namespace cuda_test;
using ablate::CPU;
using ablate::CUDA;
using ablate::cuda::AttentionKernel;

namespace {

constexpr double kTensorCoreTolerance = 2e-2;  // see the header comment

// Selects the attention kernels for one scope and restores the previous choice.
class AttentionKernelScope {
 public:
  explicit AttentionKernelScope(AttentionKernel kernel)
      : previous_(ablate::cuda::attention_kernel()) {
    ablate::cuda::set_attention_kernel(kernel);
  }
  ~AttentionKernelScope() { ablate::cuda::set_attention_kernel(previous_); }
  AttentionKernelScope(const AttentionKernelScope&) = delete;
  AttentionKernelScope& operator=(const AttentionKernelScope&) = delete;

 private:
  AttentionKernel previous_;
};

struct AttentionCase {
  std::ptrdiff_t batch, seq, heads, qk_dim, v_dim;
};

ablate::AttentionShape shape_of(const AttentionCase& c, bool causal) {
  ablate::AttentionShape a;
  a.batch = c.batch;
  a.seq = c.seq;
  a.heads = c.heads;
  a.qk_dim = c.qk_dim;
  a.v_dim = c.v_dim;
  a.scale = 1.0 / std::sqrt(static_cast<double>(c.qk_dim));
  a.causal = causal;
  return a;
}

bool same_bits(const CpuTensor& a, const CpuTensor& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data());
}

// Random q, k, v and an upstream gradient for one attention call.
// qk_stddev scales q and k: at 2 the logits have a standard deviation of 4 (peaked rows whose
// running maximum jumps between key tiles).
struct AttentionInputs {
  CpuTensor q, k, v, dout;
  explicit AttentionInputs(const ablate::AttentionShape& a, std::uint64_t seed = 0,
                           double qk_stddev = 1.0)
      : q(random_tensor(a.batch * a.seq, a.heads * a.qk_dim, seed + 1, qk_stddev)),
        k(random_tensor(a.batch * a.seq, a.heads * a.qk_dim, seed + 2, qk_stddev)),
        v(random_tensor(a.batch * a.seq, a.heads * a.v_dim, seed + 3)),
        dout(random_tensor(a.batch * a.seq, a.heads * a.v_dim, seed + 4)) {}
};

// t with `extra` random columns appended (a tensor wider than its heads, as a fused projection
// output is).
CpuTensor widened(const CpuTensor& t, std::ptrdiff_t extra, std::uint64_t seed) {
  CpuTensor w(t.rows(), t.cols() + extra);
  w.leftCols(t.cols()) = t;
  w.rightCols(extra) = random_tensor(t.rows(), extra, seed);
  return w;
}

struct GpuGradients {
  CpuTensor out, dq, dk, dv;
};

// Forward and backward on the GPU, each with the given kernels (by default the current choice).
GpuGradients run_gpu(const AttentionInputs& in, const ablate::AttentionShape& a, double p,
                     std::uint64_t key, AttentionKernel forward = ablate::cuda::attention_kernel(),
                     AttentionKernel backward = ablate::cuda::attention_kernel()) {
  const GpuTensor q = to_gpu(in.q), k = to_gpu(in.k), v = to_gpu(in.v), dout = to_gpu(in.dout);
  GpuTensor out, state, dq, dk, dv;
  {
    const AttentionKernelScope scope(forward);
    CUDA::attention_forward(out, state, q, k, v, a, p, key);
  }
  CHECK(state.rows() == a.batch * a.heads * a.seq);  // per-row state, never T x T
  CHECK(state.cols() == 1 + a.v_dim);
  {
    const AttentionKernelScope scope(backward);
    CUDA::attention_backward(dq, dk, dv, dout, state, q, k, v, a, p, key);
  }
  return {to_cpu(out), to_cpu(dq), to_cpu(dk), to_cpu(dv)};
}

// The CPU backend's output and gradients on the same inputs.
GpuGradients run_cpu(const AttentionInputs& in, const ablate::AttentionShape& a, double p,
                     std::uint64_t key) {
  CpuTensor out, probs, dq, dk, dv;
  CPU::attention_forward(out, probs, in.q, in.k, in.v, a, p, key);
  CPU::attention_backward(dq, dk, dv, in.dout, probs, in.q, in.k, in.v, a, p, key);
  return {out, dq, dk, dv};
}

// out and dq of the first `cut` positions of every sequence are bit-identical in g and h.
bool earlier_rows_same(const GpuGradients& g, const GpuGradients& h, std::ptrdiff_t batch,
                       std::ptrdiff_t seq, std::ptrdiff_t cut) {
  bool same = true;
  for (std::ptrdiff_t b = 0; b < batch; ++b) {
    same = same && same_bits(g.out.middleRows(b * seq, cut), h.out.middleRows(b * seq, cut));
    same = same && same_bits(g.dq.middleRows(b * seq, cut), h.dq.middleRows(b * seq, cut));
  }
  return same;
}

// The inputs with keys and values from position `cut` on shifted.
AttentionInputs with_later_keys_changed(const AttentionInputs& in, std::ptrdiff_t batch,
                                        std::ptrdiff_t seq, std::ptrdiff_t cut) {
  AttentionInputs later = in;
  for (std::ptrdiff_t b = 0; b < batch; ++b)
    for (std::ptrdiff_t t = cut; t < seq; ++t) {
      later.k.row(b * seq + t).array() += 3.f;
      later.v.row(b * seq + t).array() -= 5.f;
    }
  return later;
}

// Output and q/k/v gradients of the selected kernel set against the CPU backend, causal and
// not, without and with dropout, for every case.
void check_against_cpu(const std::vector<AttentionCase>& cases, double tolerance) {
  for (const AttentionCase& c : cases)
    for (const bool causal : {true, false})
      for (const double p : {0.0, 0.1}) {
        CAPTURE(c.batch);
        CAPTURE(c.seq);
        CAPTURE(c.heads);
        CAPTURE(c.qk_dim);
        CAPTURE(c.v_dim);
        CAPTURE(causal);
        CAPTURE(p);
        const ablate::AttentionShape a = shape_of(c, causal);
        const AttentionInputs in(a, static_cast<std::uint64_t>(c.seq * 10 + c.qk_dim));
        const std::uint64_t key = 1234;
        const GpuGradients ref = run_cpu(in, a, p, key);
        const GpuGradients g = run_gpu(in, a, p, key);
        CHECK(relative_error(g.out, ref.out) < tolerance);
        CHECK(relative_error(g.dq, ref.dq) < tolerance);
        CHECK(relative_error(g.dk, ref.dk) < tolerance);
        CHECK(relative_error(g.dv, ref.dv) < tolerance);
      }
}

// The causality probe on the selected kernel set: keys and values from position `cut` on are
// changed.  Causal: every output and gradient row before the cut is bit-identical.
// Non-causal: the probe sees the change.
void check_causality(const AttentionCase& c, std::ptrdiff_t cut) {
  for (const double p : {0.0, 0.1}) {
    CAPTURE(p);
    for (const bool causal : {true, false}) {
      CAPTURE(causal);
      const ablate::AttentionShape a = shape_of(c, causal);
      const AttentionInputs in(a, 5);
      const AttentionInputs later = with_later_keys_changed(in, c.batch, c.seq, cut);
      const GpuGradients g = run_gpu(in, a, p, 9), h = run_gpu(later, a, p, 9);
      CHECK(earlier_rows_same(g, h, c.batch, c.seq, cut) == causal);
      CHECK(relative_error(h.out, g.out) > 1e-3);
    }
  }
}

// Two runs of the selected kernel set (dropout on) are bit-identical.
void check_deterministic(const ablate::AttentionShape& a) {
  const AttentionInputs in(a, 11);
  const GpuGradients first = run_gpu(in, a, 0.1, 3), second = run_gpu(in, a, 0.1, 3);
  CHECK(same_bits(first.out, second.out));
  CHECK(same_bits(first.dq, second.dq));
  CHECK(same_bits(first.dk, second.dk));
  CHECK(same_bits(first.dv, second.dv));
}

}  // namespace

TEST_CASE("cuda: rope matches the CPU backend in both layouts, forward and inverse") {
  struct RopeCase {
    std::ptrdiff_t seq, rows, heads, head_stride, offset, rope_dim, extra_cols;
    double theta;
  };
  // MHA (whole head), MLA queries (rotary tail of each head), MLA's shared rotary key, wide
  // heads, and a tensor wider than its heads.
  for (const RopeCase& r : {RopeCase{5, 10, 3, 6, 2, 4, 3, 10000.0}, RopeCase{7, 21, 4, 32, 0, 32, 0, 10000.0},
                            RopeCase{6, 12, 2, 24, 16, 8, 0, 50000.0}, RopeCase{9, 18, 1, 64, 0, 64, 0, 10000.0},
                            RopeCase{33, 66, 2, 130, 2, 128, 5, 10000.0}}) {
    for (const auto layout : {ablate::RopeLayout::Interleaved, ablate::RopeLayout::DeepSeek}) {
      CAPTURE(r.rope_dim);
      CAPTURE(r.offset);
      CAPTURE(static_cast<int>(layout));
      const CpuTensor x = random_tensor(r.rows, r.heads * r.head_stride + r.extra_cols, 5);
      CpuTensor fwd = x, inv = x;
      GpuTensor gfwd = to_gpu(x), ginv = to_gpu(x);
      CPU::rope_apply(fwd, r.seq, r.heads, r.head_stride, r.offset, r.rope_dim, r.theta, layout, false);
      CUDA::rope_apply(gfwd, r.seq, r.heads, r.head_stride, r.offset, r.rope_dim, r.theta, layout, false);
      CHECK(relative_error(gfwd, fwd) < 1e-6);
      CPU::rope_apply(inv, r.seq, r.heads, r.head_stride, r.offset, r.rope_dim, r.theta, layout, true);
      CUDA::rope_apply(ginv, r.seq, r.heads, r.head_stride, r.offset, r.rope_dim, r.theta, layout, true);
      CHECK(relative_error(ginv, inv) < 1e-6);
      // The inverse undoes the forward (rotation and layout).
      CUDA::rope_apply(gfwd, r.seq, r.heads, r.head_stride, r.offset, r.rope_dim, r.theta, layout, true);
      CHECK(relative_error(gfwd, x) < 1e-6);
    }
  }
  GpuTensor x(4, 8);
  CHECK_THROWS_AS(CUDA::rope_apply(x, 4, 2, 4, 2, 4, 10000.0, ablate::RopeLayout::Interleaved, false),
                  ablate::invalid_input);  // the rotary slice overruns its head
  CHECK_THROWS_AS(CUDA::rope_apply(x, 4, 3, 4, 0, 4, 10000.0, ablate::RopeLayout::Interleaved, false),
                  ablate::invalid_input);  // more heads than columns
}

TEST_CASE("cuda: fused attention forward and gradients match the CPU backend") {
  const AttentionKernelScope fp32(AttentionKernel::fp32);
  // MHA head dims (tiny, 16, 64, 128) and MLA's qk != v (96/64, 192/128, 33/65), the 256 maximum;
  // sequence lengths off the 32-key tile and the 8-row block.
  const std::vector<AttentionCase> cases = {
      {2, 45, 3, 16, 16},  {1, 37, 2, 6, 6},    {1, 33, 1, 4, 4},     {2, 70, 2, 64, 64},
      {1, 50, 2, 128, 128}, {1, 70, 2, 96, 64}, {1, 40, 2, 192, 128}, {1, 9, 1, 33, 65},
      {1, 20, 1, 256, 256}, {2, 130, 2, 32, 32},
  };
  check_against_cpu(cases, kFp32Tolerance);
}

TEST_CASE("cuda: attention over a single token returns its value and no q/k gradient") {
  const AttentionKernelScope fp32(AttentionKernel::fp32);
  const ablate::AttentionShape a = shape_of({2, 1, 2, 8, 8}, true);
  const AttentionInputs in(a, 77);
  const GpuGradients g = run_gpu(in, a, 0.0, 1);
  CHECK(relative_error(g.out, in.v) < kFp32Tolerance);
  // The softmax over one key is constant: the exact gradients are zero (the CPU's too).
  CHECK(g.dq.norm() < kFp32Tolerance * in.q.norm());
  CHECK(g.dk.norm() < kFp32Tolerance * in.k.norm());
  CHECK(relative_error(g.dv, in.dout) < kFp32Tolerance);
}

TEST_CASE("cuda: causal attention kernels never read later keys or values") {
  const AttentionKernelScope fp32(AttentionKernel::fp32);
  check_causality({2, 45, 3, 24, 16}, 20);  // the cut inside a 32-key tile and an 8-row block
}

TEST_CASE("cuda: attention gradients are deterministic (no atomics)") {
  const AttentionKernelScope fp32(AttentionKernel::fp32);
  check_deterministic(shape_of({2, 77, 2, 32, 48}, true));
}

TEST_CASE("cuda: attention rejects shapes its kernels cannot handle") {
  const AttentionKernelScope fp32(AttentionKernel::fp32);
  const auto call = [](const ablate::AttentionShape& a, std::ptrdiff_t q_rows) {
    const GpuTensor q(q_rows, a.heads * a.qk_dim), k(a.batch * a.seq, a.heads * a.qk_dim),
        v(a.batch * a.seq, a.heads * a.v_dim);
    GpuTensor out, state;
    CUDA::attention_forward(out, state, q, k, v, a, 0.0, 1);
  };
  ablate::AttentionShape a = shape_of({1, 4, 2, 300, 8}, true);
  CHECK_THROWS_AS(call(a, 4), ablate::invalid_input);  // head dim above the maximum
  a = shape_of({1, 4, 2, 8, 8}, true);
  CHECK_THROWS_AS(call(a, 3), ablate::invalid_input);  // q rows do not match batch * seq
  CHECK_NOTHROW(call(a, 4));

  const GpuTensor t(4, 16);
  GpuTensor out, state, dq, dk, dv;
  CUDA::attention_forward(out, state, t, t, t, a, 0.0, 1);
  GpuTensor wrong_state(4, 1);
  CHECK_THROWS_AS(CUDA::attention_backward(dq, dk, dv, out, wrong_state, t, t, t, a, 0.0, 1),
                  ablate::invalid_input);
  CHECK_THROWS_AS(CUDA::attention_forward(out, state, t, t, t, a, 1.0, 1), ablate::invalid_input);
}

TEST_CASE("cuda: tensor-core attention forward and gradients match the CPU backend") {
  const AttentionKernelScope tensor_core(AttentionKernel::tensor_core);
  // Head dims 16, 64, 128 and MLA-like qk != v (64/32, 32/64, 48/80: fragment counts that are
  // not powers of two); sequence lengths inside one 16-row warp slice, off the 64-row block and
  // 64-key tile, exactly four tiles, and a partial second tile; batch * heads > 1 throughout.
  const std::vector<AttentionCase> cases = {
      {2, 17, 2, 16, 16},   {1, 100, 2, 64, 64}, {1, 256, 2, 64, 64}, {2, 100, 2, 128, 128},
      {1, 70, 2, 64, 32},   {1, 45, 2, 32, 64},  {1, 130, 3, 48, 80},
  };
  check_against_cpu(cases, kTensorCoreTolerance);
}

TEST_CASE("cuda: attention on tensors wider than their heads, with peaked softmax rows") {
  // Row strides that are not multiples of 4 floats (the tensor-core kernels' scalar staging
  // path instead of float4) and that differ per tensor; q and k at stddev 2.  The head columns
  // match the CPU on the exact-width tensors; the gradients' extra columns are zero.  A host
  // emulation of the tensor-core rounding measured <= 8e-3 at this logit scale.
  const AttentionCase c{2, 150, 2, 64, 32};
  const std::ptrdiff_t qk_cols = c.heads * c.qk_dim, v_cols = c.heads * c.v_dim;
  for (const auto& [kernel, tolerance] : {std::pair{AttentionKernel::fp32, kFp32Tolerance},
                                          std::pair{AttentionKernel::tensor_core,
                                                    kTensorCoreTolerance}})
    for (const bool causal : {true, false})
      for (const double p : {0.0, 0.1}) {
        CAPTURE(static_cast<int>(kernel));
        CAPTURE(causal);
        CAPTURE(p);
        const ablate::AttentionShape a = shape_of(c, causal);
        const AttentionInputs in(a, 31, /*qk_stddev=*/2.0);
        AttentionInputs wide = in;
        wide.q = widened(in.q, 3, 41);
        wide.k = widened(in.k, 5, 42);
        wide.v = widened(in.v, 1, 43);
        wide.dout = widened(in.dout, 2, 44);
        const GpuGradients ref = run_cpu(in, a, p, 7);
        const GpuGradients g = run_gpu(wide, a, p, 7, kernel, kernel);
        CHECK(relative_error(g.out, ref.out) < tolerance);
        CHECK(relative_error(CpuTensor(g.dq.leftCols(qk_cols)), ref.dq) < tolerance);
        CHECK(relative_error(CpuTensor(g.dk.leftCols(qk_cols)), ref.dk) < tolerance);
        CHECK(relative_error(CpuTensor(g.dv.leftCols(v_cols)), ref.dv) < tolerance);
        CHECK(g.dq.rightCols(3).isZero(0));
        CHECK(g.dk.rightCols(5).isZero(0));
        CHECK(g.dv.rightCols(1).isZero(0));
      }
}

TEST_CASE("cuda: tensor-core attention over a single token") {
  const AttentionKernelScope tensor_core(AttentionKernel::tensor_core);
  for (const bool causal : {true, false}) {
    CAPTURE(causal);
    const ablate::AttentionShape a = shape_of({2, 1, 2, 16, 16}, causal);
    const AttentionInputs in(a, 77);
    const GpuGradients g = run_gpu(in, a, 0.0, 1);
    // The output is the value, rounded to bf16 on its way through P V.
    CHECK(relative_error(g.out, in.v) < kTensorCoreTolerance);
    CHECK(relative_error(g.dv, in.dout) < kTensorCoreTolerance);
    // The exact q/k gradients are zero; what remains is dP = dO . V from bf16 operands against
    // D from fp32 ones (an emulation gives ~1e-3 of |q|).
    CHECK(g.dq.norm() < kTensorCoreTolerance * in.q.norm());
    CHECK(g.dk.norm() < kTensorCoreTolerance * in.k.norm());
  }
}

TEST_CASE("cuda: causal tensor-core attention never reads later keys or values") {
  const AttentionKernelScope tensor_core(AttentionKernel::tensor_core);
  // The cut inside the first 64-row block and 64-key tile, mid-warp.
  check_causality({2, 100, 3, 32, 16}, 40);
}

TEST_CASE("cuda: tensor-core attention is deterministic (no atomics)") {
  const AttentionKernelScope tensor_core(AttentionKernel::tensor_core);
  for (const bool causal : {true, false}) {
    CAPTURE(causal);
    check_deterministic(shape_of({2, 150, 2, 64, 32}, causal));
  }
}

TEST_CASE("cuda: either attention forward's saved state feeds either backward") {
  // The state layout ([log-sum-exp, output] per row) is shared, so a forward of one kernel set
  // and a backward of the other still agree with the CPU (to bf16 rounding: one side is bf16).
  for (const bool causal : {true, false})
    for (const double p : {0.0, 0.1}) {
      CAPTURE(causal);
      CAPTURE(p);
      const ablate::AttentionShape a = shape_of({2, 90, 2, 64, 48}, causal);
      const AttentionInputs in(a, 21);
      const GpuGradients ref = run_cpu(in, a, p, 5);
      for (const auto& [forward, backward] :
           {std::pair{AttentionKernel::tensor_core, AttentionKernel::fp32},
            std::pair{AttentionKernel::fp32, AttentionKernel::tensor_core}}) {
        CAPTURE(static_cast<int>(forward));
        const GpuGradients g = run_gpu(in, a, p, 5, forward, backward);
        CHECK(relative_error(g.out, ref.out) < kTensorCoreTolerance);
        CHECK(relative_error(g.dq, ref.dq) < kTensorCoreTolerance);
        CHECK(relative_error(g.dk, ref.dk) < kTensorCoreTolerance);
        CHECK(relative_error(g.dv, ref.dv) < kTensorCoreTolerance);
      }
    }
}

TEST_CASE("cuda: attention kernel selection") {
  using ablate::cuda::attention_kernel_for;
  using ablate::cuda::parse_attention_kernel;
  CHECK(parse_attention_kernel("auto") == AttentionKernel::automatic);
  CHECK(parse_attention_kernel("fp32") == AttentionKernel::fp32);
  CHECK(parse_attention_kernel("tensor_core") == AttentionKernel::tensor_core);
  CHECK_THROWS_AS(parse_attention_kernel("bf16"), ablate::invalid_input);

  const ablate::AttentionShape mha = shape_of({1, 8, 2, 64, 64}, true);
  const ablate::AttentionShape mla = shape_of({1, 8, 2, 32, 64}, true);
  const ablate::AttentionShape odd = shape_of({1, 8, 2, 24, 24}, true);
  const ablate::AttentionShape wide = shape_of({1, 8, 2, 144, 144}, true);
  {
    const AttentionKernelScope automatic(AttentionKernel::automatic);
    CHECK(attention_kernel_for(mha) == AttentionKernel::tensor_core);
    CHECK(attention_kernel_for(mla) == AttentionKernel::tensor_core);
    CHECK(attention_kernel_for(odd) == AttentionKernel::fp32);   // not a multiple of 16
    CHECK(attention_kernel_for(wide) == AttentionKernel::fp32);  // above 128
    const AttentionInputs in(odd, 3);
    CHECK_NOTHROW(run_gpu(in, odd, 0.0, 1));
  }
  {
    const AttentionKernelScope fp32(AttentionKernel::fp32);
    CHECK(attention_kernel_for(mha) == AttentionKernel::fp32);
  }
  {
    // Forcing the tensor-core kernels onto head dims they cannot run is an error, forward and
    // backward (whose state an fp32 forward made).
    const AttentionKernelScope tensor_core(AttentionKernel::tensor_core);
    CHECK(attention_kernel_for(mha) == AttentionKernel::tensor_core);
    CHECK_THROWS_AS(attention_kernel_for(odd), ablate::invalid_input);
    const AttentionInputs in(odd, 3);
    const GpuTensor q = to_gpu(in.q), k = to_gpu(in.k), v = to_gpu(in.v), dout = to_gpu(in.dout);
    GpuTensor out, state, dq, dk, dv;
    CHECK_THROWS_AS(CUDA::attention_forward(out, state, q, k, v, odd, 0.0, 1),
                    ablate::invalid_input);
    {
      const AttentionKernelScope fp32(AttentionKernel::fp32);
      CUDA::attention_forward(out, state, q, k, v, odd, 0.0, 1);
    }
    CHECK_THROWS_AS(CUDA::attention_backward(dq, dk, dv, dout, state, q, k, v, odd, 0.0, 1),
                    ablate::invalid_input);
  }
}
