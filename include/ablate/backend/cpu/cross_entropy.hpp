// Softmax cross-entropy over the vocabulary, fused with its gradient: one pass per row gives
// the loss, the argmax accuracy and d(loss)/d(logits).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/loss_stats.hpp"
#include "ablate/core/tokens.hpp"

namespace ablate::cpu {

template <class S>
struct CrossEntropyKernels {
  using Tensor = Matrix<S>;

  static constexpr Eigen::Index kBlock = 256;

  // The row's maximum and the first index holding it, as Eigen's maxCoeff(&index) gives them,
  // but vectorised: the maxima of short blocks, then a scan of the first block that holds the
  // largest (maxCoeff with an index runs one scalar compare per element).
  template <class Row>
  static S max_and_first_argmax(const Row& row, Eigen::Index& arg) {
    Eigen::Index best_block = 0;
    S best = row.segment(0, std::min(kBlock, row.size())).maxCoeff();
    for (Eigen::Index c = kBlock; c < row.size(); c += kBlock) {
      const S m = row.segment(c, std::min(kBlock, row.size() - c)).maxCoeff();
      if (m > best) best = m, best_block = c;
    }
    arg = best_block;
    const Eigen::Index end = std::min(best_block + kBlock, row.size());
    for (Eigen::Index c = best_block; c < end; ++c)
      if (row(c) == best) {
        arg = c;
        break;
      }
    return best;
  }

  // The sum of a row of positive values: vectorised sums in S over short blocks, so that each
  // adds few terms, accumulated in double, so that the loss keeps its digits at any vocabulary
  // size (a cast to double before the sum would run scalar).
  template <class Row>
  static double sum_in_double(const Row& row) {
    double sum = 0.0;
    for (Eigen::Index c = 0; c < row.size(); c += kBlock)
      sum += static_cast<double>(row.segment(c, std::min(kBlock, row.size() - c)).sum());
    return sum;
  }

  // dlogits (if not null) = grad_scale * (softmax(logits) - onehot(target)).  A NaN logit
  // makes its row's loss and gradient NaN; a target outside [0, cols) throws.
  static LossSums cross_entropy(const Tensor& logits, const std::int32_t* targets,
                                Tensor* dlogits, double grad_scale) {
    const Eigen::Index n = logits.rows();
    check_ids(targets, static_cast<std::size_t>(n), static_cast<std::size_t>(logits.cols()),
              "ablate::CPU cross_entropy: target id");
    if (dlogits != nullptr) cpu::resize(*dlogits, n, logits.cols());
    std::vector<double> row_loss(static_cast<std::size_t>(n));
    std::vector<unsigned char> row_hit(static_cast<std::size_t>(n));
    ParallelErrors errors;
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) errors.run([&] {
      const auto z = logits.row(r);
      Eigen::Index arg = 0;
      const S m = max_and_first_argmax(z, arg);
      // exp(z - m) is taken once, in S, where Eigen vectorises it (an exp of the values cast
      // to double runs scalar libm), into an aligned buffer, so that the sum's order, and with
      // it the loss, does not depend on where a row starts or on whether a gradient is asked
      // for; the gradient row is then that row scaled.
      thread_local Eigen::Array<S, 1, Eigen::Dynamic> e;
      cpu::resize(e, 1, z.size());
      e = (z.array() - m).exp();
      const double sum = sum_in_double(e);
      // The loss first: dlogits may be logits itself (a gradient in place).
      const double log_sum = std::log(sum) + static_cast<double>(m);
      row_loss[static_cast<std::size_t>(r)] = log_sum - static_cast<double>(z(targets[r]));
      row_hit[static_cast<std::size_t>(r)] = arg == targets[r];
      if (dlogits != nullptr) {
        auto g = dlogits->row(r).array();
        g = e * static_cast<S>(grad_scale / sum);
        g(targets[r]) -= static_cast<S>(grad_scale);
      }
    });
    errors.rethrow();
    LossSums out;
    for (Eigen::Index r = 0; r < n; ++r) {
      out.loss_sum += row_loss[static_cast<std::size_t>(r)];
      out.correct += row_hit[static_cast<std::size_t>(r)];
    }
    out.count = static_cast<std::size_t>(n);
    return out;
  }
};

}  // namespace ablate::cpu
