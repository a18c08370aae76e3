// Mixture-of-experts kernels: router activations (row softmax, sigmoid, noise), top-K and
// group-limited top-K selection, the gathers and scatters that move tokens between the
// [tokens, features] activations and each expert's contiguous batch, and the bookkeeping that
// groups routed slots by expert.
//
// Routing is stored as `Indices`: for N tokens and K choices, entry n*K + k is the expert of
// token n's k-th choice (a "slot"); a [N, K] weight tensor is addressed by the same flat slot
// index.  A dispatch plan lists the slots grouped by expert (tokens ascending within an expert)
// with the token row of each, so one expert's batch is rows [offsets[e], offsets[e+1]).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/expert_selection.hpp"
#include "ablate/core/operand_checks.hpp"

namespace ablate::cpu {

template <class S>
struct MoEKernels {
  using Tensor = Matrix<S>;
  using Indices = std::vector<std::int32_t>;

  // ---- router activations ------------------------------------------------------------------

  // y = softmax over each row of x (max-subtracted).  y may alias x.
  static void row_softmax(Tensor& y, const Tensor& x) {
    const auto maxima = x.rowwise().maxCoeff().eval();
    Tensor e = (x.colwise() - maxima).array().exp().matrix();
    const auto sums = e.rowwise().sum().eval();
    e.array().colwise() /= sums.array();
    y = std::move(e);
  }
  // dx = y * (dy - rowsum(dy * y)) for y = softmax(x).
  static void row_softmax_backward(Tensor& dx, const Tensor& y, const Tensor& dy) {
    const auto dots = dy.cwiseProduct(y).rowwise().sum().eval();
    Tensor out = (y.array() * (dy.colwise() - dots).array()).matrix();
    dx = std::move(out);
  }

  // y = 1 / (1 + exp(-x))
  static void sigmoid_forward(Tensor& y, const Tensor& x) {
    cpu::resize(y, x.rows(), x.cols());
    y.array() = S(1) / (S(1) + (-x.array()).exp());
  }
  // dx = dy * y * (1 - y) for y = sigmoid(x).
  static void sigmoid_backward(Tensor& dx, const Tensor& dy, const Tensor& y) {
    cpu::resize(dx, y.rows(), y.cols());
    dx.array() = dy.array() * y.array() * (S(1) - y.array());
  }

  // x[i] += stddev * normal(key, i): the counter-based stream, so the noise of a forward is
  // reproducible from its key.
  static void add_normal_noise(Tensor& x, std::uint64_t key, double stddev) {
    S* p = x.data();
    const Eigen::Index n = x.size();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i)
      p[i] += static_cast<S>(stddev * standard_normal(key, static_cast<std::uint64_t>(i)));
  }

  // y[r] += row (row is 1 x cols).
  static void add_row_broadcast(Tensor& y, const Tensor& row) { y.rowwise() += row.row(0); }

  // out (1 x cols) = mean over rows of x.
  static void column_means(Tensor& out, const Tensor& x) {
    cpu::resize(out, 1, x.cols());
    out.row(0) = x.colwise().sum() / static_cast<S>(x.rows());
  }

  // ---- expert selection --------------------------------------------------------------------

  // idx[r*k + j] = column of the j-th largest entry of row r (ties: lower column first).
  static void topk_rows(Indices& idx, const Tensor& scores, Eigen::Index k) {
    const Eigen::Index n = scores.rows(), cols = scores.cols();
    idx.resize(static_cast<std::size_t>(n * k));
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r)
      select_top(scores.row(r).data(), cols, k, idx.data() + r * k);
  }

  // DeepSeek-V3 / GLM4 group-limited selection on `choice` [N, E] split into n_group groups of
  // consecutive experts, row by row (ablate::group_limited_select).  `masked` receives the
  // masked scores, `group_scores` [N, n_group] the group scores.
  static void group_limited_topk(Indices& idx, Tensor& masked, Tensor& group_scores,
                                 const Tensor& choice, Eigen::Index n_group,
                                 Eigen::Index topk_group, Eigen::Index k) {
    const Eigen::Index n = choice.rows(), cols = choice.cols();
    idx.resize(static_cast<std::size_t>(n * k));
    cpu::resize(masked, n, cols);
    cpu::resize(group_scores, n, n_group);
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r)
      group_limited_select(idx.data() + r * k, masked.row(r).data(), group_scores.row(r).data(),
                           choice.row(r).data(), cols, n_group, topk_group, k);
  }

  // out[r, j] = src[r, idx[r*k + j]]: out is [N, k].
  static void gather_columns(Tensor& out, const Tensor& src, const Indices& idx, Eigen::Index k) {
    const Eigen::Index n = src.rows();
    cpu::resize(out, n, k);
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r)
      for (Eigen::Index j = 0; j < k; ++j) out(r, j) = src(r, idx[static_cast<std::size_t>(r * k + j)]);
  }
  // out = zeros [N, cols]; out[r, idx[r*k + j]] = src[r, j].  The indices of a row are distinct.
  static void scatter_columns(Tensor& out, const Tensor& src, const Indices& idx, Eigen::Index cols) {
    const Eigen::Index n = src.rows(), k = src.cols();
    cpu::resize(out, n, cols);
    out.setZero();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r)
      for (Eigen::Index j = 0; j < k; ++j) out(r, idx[static_cast<std::size_t>(r * k + j)]) = src(r, j);
  }

  // w = scale * g / (rowsum(g) + eps)
  static void normalize_rows(Tensor& w, const Tensor& g, double eps, double scale) {
    const auto denom = (g.rowwise().sum().array() + static_cast<S>(eps)).eval();
    Tensor out = g;
    out.array().colwise() /= denom;
    out *= static_cast<S>(scale);
    w = std::move(out);
  }
  // Backward of normalize_rows: dg_j = scale * (dw_j / D - sum_k(dw_k g_k) / D^2).
  static void normalize_rows_backward(Tensor& dg, const Tensor& dw, const Tensor& g, double eps,
                                      double scale) {
    const auto denom = (g.rowwise().sum().array() + static_cast<S>(eps)).eval();
    const auto dots = dw.cwiseProduct(g).rowwise().sum().array().eval();
    const auto shift = (dots / denom).eval();
    Tensor out = (dw.colwise() - shift.matrix()).eval();
    out.array().colwise() /= denom;
    out *= static_cast<S>(scale);
    dg = std::move(out);
  }

  // ---- dispatch ----------------------------------------------------------------------------

  // counts[e] = number of slots routed to expert e (host side).
  static void moe_expert_counts(std::vector<std::size_t>& counts, const Indices& idx,
                                std::size_t experts) {
    counts.assign(experts, 0);
    for (std::int32_t e : idx) ++counts[static_cast<std::size_t>(e)];
  }

  // Groups the slots by expert (a counting sort, stable in slot order): position p in
  // [offsets[e], offsets[e+1]) holds token rows[p] and slot slots[p] of expert e.  offsets is
  // host side: it sizes each expert's batch.
  static void moe_dispatch_plan(Indices& rows, Indices& slots, std::vector<std::size_t>& offsets,
                                const Indices& idx, std::size_t experts, std::size_t k) {
    offsets.assign(experts + 1, 0);
    for (std::int32_t e : idx) ++offsets[static_cast<std::size_t>(e) + 1];
    for (std::size_t e = 0; e < experts; ++e) offsets[e + 1] += offsets[e];
    rows.resize(idx.size());
    slots.resize(idx.size());
    std::vector<std::size_t> cursor(offsets.begin(), offsets.end() - 1);
    for (std::size_t s = 0; s < idx.size(); ++s) {
      const std::size_t p = cursor[static_cast<std::size_t>(idx[s])]++;
      rows[p] = static_cast<std::int32_t>(s / k);
      slots[p] = static_cast<std::int32_t>(s);
    }
  }

  // out[i] = x[rows[begin + i]] for i < count.
  static void gather_rows(Tensor& out, const Tensor& x, const Indices& rows, std::size_t begin,
                          std::size_t count) {
    const auto n = static_cast<Eigen::Index>(count);
    cpu::resize(out, n, x.cols());
    const std::int32_t* r = rows.data() + begin;
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i) out.row(i) = x.row(r[i]);
  }
  // out[i] = weights.flat[slots[begin + i]] * x[rows[begin + i]]
  static void gather_rows_weighted(Tensor& out, const Tensor& x, const Indices& rows,
                                   const Indices& slots, const Tensor& weights, std::size_t begin,
                                   std::size_t count) {
    const auto n = static_cast<Eigen::Index>(count);
    cpu::resize(out, n, x.cols());
    const std::int32_t* r = rows.data() + begin;
    const std::int32_t* s = slots.data() + begin;
    const S* w = weights.data();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i) out.row(i) = w[s[i]] * x.row(r[i]);
  }
  // y[rows[begin + i]] += src[i].  Within one expert's range the rows are distinct.
  static void scatter_add_rows(Tensor& y, const Tensor& src, const Indices& rows, std::size_t begin) {
    checks::same_columns(y, src, "moe scatter_add_rows", "y", "src");
    const Eigen::Index n = src.rows();
    const std::int32_t* r = rows.data() + begin;
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i) y.row(r[i]) += src.row(i);
  }
  // y[rows[begin + i]] += weights.flat[slots[begin + i]] * src[i]: the weighted combine.
  static void scatter_add_rows_weighted(Tensor& y, const Tensor& src, const Indices& rows,
                                        const Indices& slots, const Tensor& weights,
                                        std::size_t begin) {
    checks::same_columns(y, src, "moe scatter_add_rows_weighted", "y", "src");
    const Eigen::Index n = src.rows();
    const std::int32_t* r = rows.data() + begin;
    const std::int32_t* s = slots.data() + begin;
    const S* w = weights.data();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i) y.row(r[i]) += w[s[i]] * src.row(i);
  }
  // out.flat[slots[begin + i]] = x[rows[begin + i]] . src[i]: the gradient of the combine
  // weights (out is [N, K] and keeps its other entries).
  static void gather_row_dots(Tensor& out, const Tensor& x, const Tensor& src, const Indices& rows,
                              const Indices& slots, std::size_t begin) {
    const Eigen::Index n = src.rows();
    const std::int32_t* r = rows.data() + begin;
    const std::int32_t* s = slots.data() + begin;
    S* o = out.data();
    ABLATE_PARALLEL_FOR
    for (Eigen::Index i = 0; i < n; ++i) o[s[i]] = x.row(r[i]).dot(src.row(i));
  }

  // Auxiliary-loss-free balancing: bias[e] += rate * sign(mean(load) - load[e]).
  static void moe_balance_bias(Tensor& bias, const std::vector<std::size_t>& loads, double rate) {
    double total = 0;
    for (std::size_t l : loads) total += static_cast<double>(l);
    const double mean = loads.empty() ? 0.0 : total / static_cast<double>(loads.size());
    for (std::size_t e = 0; e < loads.size(); ++e) {
      const double gap = mean - static_cast<double>(loads[e]);
      const double sign = gap > 0 ? 1.0 : (gap < 0 ? -1.0 : 0.0);
      bias(0, static_cast<Eigen::Index>(e)) += static_cast<S>(rate * sign);
    }
  }
};

}  // namespace ablate::cpu
