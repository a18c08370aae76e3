// Scaled dot-product attention per (batch, head) with GEMMs: S = scale * Q K^T, optional causal
// mask, softmax, dropout on the probabilities, O = P V.  The softmax probabilities are kept for
// the backward; the dropout mask is regenerated from its key.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/attention_shape.hpp"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cpu {

template <class S>
struct AttentionKernels {
  using Tensor = Matrix<S>;

  // q, k: [batch*seq, heads*qk_dim]; v: [batch*seq, heads*v_dim]; out: [batch*seq, heads*v_dim];
  // probs: [batch*heads*seq, seq] softmax probabilities before dropout.
  static void attention_forward(Tensor& out, Tensor& probs, const Tensor& q, const Tensor& k,
                                const Tensor& v, const AttentionShape& a, double dropout_p,
                                std::uint64_t key) {
    checks::attention_inputs(q, k, v, a, dropout_p, "attention_forward");
    const Eigen::Index T = a.seq;
    cpu::resize(out, a.batch * T, a.heads * a.v_dim);
    cpu::resize(probs, a.batch * a.heads * T, T);
    const Eigen::Index pairs = a.batch * a.heads;
    ParallelErrors errors;
    ABLATE_PARALLEL_FOR
    for (Eigen::Index bh = 0; bh < pairs; ++bh) errors.run([&] {
      const Eigen::Index b = bh / a.heads, h = bh % a.heads;
      auto P = probs.middleRows(bh * T, T);
      P.noalias() = q.block(b * T, h * a.qk_dim, T, a.qk_dim) *
                    k.block(b * T, h * a.qk_dim, T, a.qk_dim).transpose();
      for (Eigen::Index i = 0; i < T; ++i) {
        auto row = P.row(i);
        const Eigen::Index visible = a.causal ? i + 1 : T;
        row *= static_cast<S>(a.scale);
        const S m = row.head(visible).maxCoeff();
        row.head(visible) = (row.head(visible).array() - m).exp();
        row.head(visible) /= row.head(visible).sum();
        row.tail(T - visible).setZero();
      }
      auto O = out.block(b * T, h * a.v_dim, T, a.v_dim);
      const auto V = v.block(b * T, h * a.v_dim, T, a.v_dim);
      if (dropout_p > 0.0) {
        Tensor& dropped = workspace(0);
        cpu::resize(dropped, T, T);
        dropped = P;
        apply_mask(dropped, bh, T, dropout_p, key);
        O.noalias() = dropped * V;
      } else {
        O.noalias() = P * V;
      }
    });
    errors.rethrow();
  }

  // dq, dk, dv are overwritten (shaped like q, k, v).
  static void attention_backward(Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& dout,
                                 const Tensor& probs, const Tensor& q, const Tensor& k,
                                 const Tensor& v, const AttentionShape& a, double dropout_p,
                                 std::uint64_t key) {
    checks::attention_inputs(q, k, v, a, dropout_p, "attention_backward");
    checks::attention_dout(dout, a, "attention_backward");
    checks::shape(probs, a.batch * a.heads * a.seq, a.seq, "attention_backward",
                  "the saved probabilities (pass the probs attention_forward filled)");
    const Eigen::Index T = a.seq;
    cpu::resize(dq, q.rows(), q.cols());
    cpu::resize(dk, k.rows(), k.cols());
    cpu::resize(dv, v.rows(), v.cols());
    // Columns beyond the heads (a tensor wider than its heads) get a zero gradient.
    if (q.cols() != a.heads * a.qk_dim) dq.setZero();
    if (k.cols() != a.heads * a.qk_dim) dk.setZero();
    if (v.cols() != a.heads * a.v_dim) dv.setZero();
    const Eigen::Index pairs = a.batch * a.heads;
    ParallelErrors errors;
    ABLATE_PARALLEL_FOR
    for (Eigen::Index bh = 0; bh < pairs; ++bh) errors.run([&] {
      const Eigen::Index b = bh / a.heads, h = bh % a.heads;
      const auto P = probs.middleRows(bh * T, T);
      const auto dO = dout.block(b * T, h * a.v_dim, T, a.v_dim);
      const auto V = v.block(b * T, h * a.v_dim, T, a.v_dim);
      const auto Q = q.block(b * T, h * a.qk_dim, T, a.qk_dim);
      const auto K = k.block(b * T, h * a.qk_dim, T, a.qk_dim);
      Tensor& dP = workspace(0);
      cpu::resize(dP, T, T);
      dP.noalias() = dO * V.transpose();
      if (dropout_p > 0.0) {
        Tensor& dropped = workspace(1);
        cpu::resize(dropped, T, T);
        dropped = P;
        apply_mask(dropped, bh, T, dropout_p, key);
        dv.block(b * T, h * a.v_dim, T, a.v_dim).noalias() = dropped.transpose() * dO;
        apply_mask(dP, bh, T, dropout_p, key);
      } else {
        dv.block(b * T, h * a.v_dim, T, a.v_dim).noalias() = P.transpose() * dO;
      }
      // Softmax backward: dS = P * (dP - rowsum(dP * P)), then the scale.
      Tensor& dS = workspace(1);
      cpu::resize(dS, T, T);
      for (Eigen::Index i = 0; i < T; ++i) {
        const S dot = dP.row(i).dot(P.row(i));
        dS.row(i) = (P.row(i).array() * (dP.row(i).array() - dot)).matrix() * static_cast<S>(a.scale);
      }
      dq.block(b * T, h * a.qk_dim, T, a.qk_dim).noalias() = dS * K;
      dk.block(b * T, h * a.qk_dim, T, a.qk_dim).noalias() = dS.transpose() * Q;
    });
    errors.rethrow();
  }

 private:
  // Per-thread T x T scratch, kept across calls: fresh buffers cost page faults every time.
  static Tensor& workspace(int slot) {
    thread_local Tensor buffers[2];
    return buffers[slot];
  }

  // The mask of pair bh covers indices [bh*T*T, (bh+1)*T*T) of the key's stream.
  static void apply_mask(Tensor& m, Eigen::Index bh, Eigen::Index T, double p, std::uint64_t key) {
    const S scale = static_cast<S>(1.0 / (1.0 - p));
    const std::uint64_t base = static_cast<std::uint64_t>(bh * T * T);
    for (Eigen::Index i = 0; i < T * T; ++i)
      m.data()[i] = uniform01(key, base + static_cast<std::uint64_t>(i)) >= p ? m.data()[i] * scale : S(0);
  }
};

}  // namespace ablate::cpu
