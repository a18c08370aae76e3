// RoPE and the fused (flash-style) attention kernels of the CUDA backend against the CPU
// backend on the same random inputs: both RoPE layouts forward and inverse; attention output
// and all three gradients, causal and not, qk_dim == v_dim (MHA) and qk_dim != v_dim (MLA),
// sequence lengths that are not multiples of the 32-key tile or the 8-row block, dropout off
// and on (the GPU draws exactly the CPU's mask); plus causality, determinism and bad input.
//
// Tolerance: both sides compute in fp32 (the attention kernels never round to bf16), so the
// results differ only by summation order and exp/log rounding: kFp32Tolerance (1e-5 relative in
// norm; a host emulation of these kernels measured <= 4e-7).  RoPE uses the CPU's double
// angles and unfused float rotation, so it matches to 1e-6.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "cuda_test_util.cuh"

using namespace cuda_test;
using ablate::CPU;
using ablate::CUDA;

namespace {

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
struct AttentionInputs {
  CpuTensor q, k, v, dout;
  explicit AttentionInputs(const ablate::AttentionShape& a, std::uint64_t seed = 0)
      : q(random_tensor(a.batch * a.seq, a.heads * a.qk_dim, seed + 1)),
        k(random_tensor(a.batch * a.seq, a.heads * a.qk_dim, seed + 2)),
        v(random_tensor(a.batch * a.seq, a.heads * a.v_dim, seed + 3)),
        dout(random_tensor(a.batch * a.seq, a.heads * a.v_dim, seed + 4)) {}
};

struct GpuGradients {
  CpuTensor out, dq, dk, dv;
};

GpuGradients run_gpu(const AttentionInputs& in, const ablate::AttentionShape& a, double p,
                     std::uint64_t key) {
  const GpuTensor q = to_gpu(in.q), k = to_gpu(in.k), v = to_gpu(in.v), dout = to_gpu(in.dout);
  GpuTensor out, state, dq, dk, dv;
  CUDA::attention_forward(out, state, q, k, v, a, p, key);
  CHECK(state.rows() == a.batch * a.heads * a.seq);  // per-row state, never T x T
  CUDA::attention_backward(dq, dk, dv, dout, state, q, k, v, a, p, key);
  return {to_cpu(out), to_cpu(dq), to_cpu(dk), to_cpu(dv)};
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
  // MHA head dims (tiny, 16, 64, 128) and MLA's qk != v (96/64, 192/128, 33/65), the 256 maximum;
  // sequence lengths off the 32-key tile and the 8-row block.
  const std::vector<AttentionCase> cases = {
      {2, 45, 3, 16, 16},  {1, 37, 2, 6, 6},    {1, 33, 1, 4, 4},     {2, 70, 2, 64, 64},
      {1, 50, 2, 128, 128}, {1, 70, 2, 96, 64}, {1, 40, 2, 192, 128}, {1, 9, 1, 33, 65},
      {1, 20, 1, 256, 256}, {2, 130, 2, 32, 32},
  };
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
        CpuTensor out, probs, dq, dk, dv;
        CPU::attention_forward(out, probs, in.q, in.k, in.v, a, p, key);
        CPU::attention_backward(dq, dk, dv, in.dout, probs, in.q, in.k, in.v, a, p, key);
        const GpuGradients g = run_gpu(in, a, p, key);
        CHECK(relative_error(g.out, out) < kFp32Tolerance);
        CHECK(relative_error(g.dq, dq) < kFp32Tolerance);
        CHECK(relative_error(g.dk, dk) < kFp32Tolerance);
        CHECK(relative_error(g.dv, dv) < kFp32Tolerance);
      }
}

TEST_CASE("cuda: attention over a single token returns its value and no q/k gradient") {
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
  const AttentionCase c{2, 45, 3, 24, 16};
  const std::ptrdiff_t cut = 20;  // inside a 32-key tile and an 8-row block
  for (const double p : {0.0, 0.1}) {
    CAPTURE(p);
    for (const bool causal : {true, false}) {
      CAPTURE(causal);
      const ablate::AttentionShape a = shape_of(c, causal);
      const AttentionInputs in(a, 5);
      AttentionInputs later = in;
      for (std::ptrdiff_t b = 0; b < c.batch; ++b)
        for (std::ptrdiff_t t = cut; t < c.seq; ++t) {
          later.k.row(b * c.seq + t).array() += 3.f;
          later.v.row(b * c.seq + t).array() -= 5.f;
        }
      const GpuGradients g = run_gpu(in, a, p, 9), h = run_gpu(later, a, p, 9);
      bool earlier_same = true;
      for (std::ptrdiff_t b = 0; b < c.batch; ++b) {
        earlier_same = earlier_same && same_bits(g.out.middleRows(b * c.seq, cut),
                                                 h.out.middleRows(b * c.seq, cut));
        earlier_same = earlier_same && same_bits(g.dq.middleRows(b * c.seq, cut),
                                                 h.dq.middleRows(b * c.seq, cut));
      }
      // Causal: rows before the cut are bit-identical.  Non-causal: the probe sees the change.
      CHECK(earlier_same == causal);
      CHECK(relative_error(h.out, g.out) > 1e-3);
    }
  }
}

TEST_CASE("cuda: attention gradients are deterministic (no atomics)") {
  const ablate::AttentionShape a = shape_of({2, 77, 2, 32, 48}, true);
  const AttentionInputs in(a, 11);
  const GpuGradients first = run_gpu(in, a, 0.1, 3), second = run_gpu(in, a, 0.1, 3);
  CHECK(same_bits(first.out, second.out));
  CHECK(same_bits(first.dq, second.dq));
  CHECK(same_bits(first.dk, second.dk));
  CHECK(same_bits(first.dv, second.dv));
}

TEST_CASE("cuda: attention rejects shapes its kernels cannot handle") {
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
