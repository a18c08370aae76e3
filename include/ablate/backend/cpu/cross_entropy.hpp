// Softmax cross-entropy over the vocabulary, fused with its gradient: one pass per row gives
// the loss, the argmax accuracy and d(loss)/d(logits).
#pragma once

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

  // dlogits (if not null) = grad_scale * (softmax(logits) - onehot(target)).  A NaN logit
  // makes its row's loss and gradient NaN; a target outside [0, cols) throws.
  static LossSums cross_entropy(const Tensor& logits, const std::int32_t* targets,
                                Tensor* dlogits, double grad_scale) {
    const Eigen::Index n = logits.rows();
    check_ids(targets, static_cast<std::size_t>(n), static_cast<std::size_t>(logits.cols()),
              "ablate::CPU cross_entropy: target id");
    if (dlogits != nullptr) dlogits->resize(n, logits.cols());
    std::vector<double> row_loss(static_cast<std::size_t>(n));
    std::vector<unsigned char> row_hit(static_cast<std::size_t>(n));
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) {
      const auto z = logits.row(r);
      Eigen::Index arg = 0;
      const S m = z.maxCoeff(&arg);
      const double sum = (z.array() - m).template cast<double>().exp().sum();
      const double log_sum = std::log(sum) + static_cast<double>(m);
      row_loss[static_cast<std::size_t>(r)] = log_sum - static_cast<double>(z(targets[r]));
      row_hit[static_cast<std::size_t>(r)] = arg == targets[r];
      if (dlogits != nullptr) {
        auto g = dlogits->row(r);
        g = ((z.array() - static_cast<S>(log_sum)).exp() * static_cast<S>(grad_scale)).matrix();
        g(targets[r]) -= static_cast<S>(grad_scale);
      }
    }
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
