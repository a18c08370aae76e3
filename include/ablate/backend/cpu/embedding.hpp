// Token embedding lookup (scaled) and its scatter-add backward.
#pragma once

#include <cstdint>

#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/error.hpp"
#include "ablate/core/tokens.hpp"

namespace ablate::cpu {

template <class S>
struct EmbeddingKernels {
  using Tensor = Matrix<S>;

  // y[r] = scale * table[ids[r]]
  static void embedding_forward(Tensor& y, const std::int32_t* ids, Eigen::Index n,
                                const Tensor& table, double scale) {
    check_ids(ids, static_cast<std::size_t>(n), static_cast<std::size_t>(table.rows()),
              "ablate::CPU embedding_forward: token id");
    cpu::resize(y, n, table.cols());
    const S s = static_cast<S>(scale);
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < n; ++r) y.row(r) = s * table.row(ids[r]);
  }

  // dtable[ids[r]] += scale * dy[r]; serial so repeated ids add in a fixed order.
  static void embedding_backward(Tensor& dtable, const std::int32_t* ids, const Tensor& dy,
                                 double scale) {
    require(dtable.cols() == dy.cols(), "ablate::CPU embedding_backward: dy has ", dy.cols(),
            " columns, the table gradient ", dtable.cols());
    check_ids(ids, static_cast<std::size_t>(dy.rows()), static_cast<std::size_t>(dtable.rows()),
              "ablate::CPU embedding_backward: token id");
    const S s = static_cast<S>(scale);
    for (Eigen::Index r = 0; r < dy.rows(); ++r) dtable.row(ids[r]) += s * dy.row(r);
  }
};

}  // namespace ablate::cpu
