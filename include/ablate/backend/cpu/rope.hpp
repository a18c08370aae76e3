// Rotary position embedding applied in place to a slice of every head (layouts: rope_layout.hpp).
#pragma once

#include <cmath>
#include <vector>

#include "ablate/backend/cpu/tensor.hpp"
#include "ablate/core/operand_checks.hpp"
#include "ablate/core/rope_layout.hpp"

namespace ablate::cpu {

template <class S>
struct RopeKernels {
  using Tensor = Matrix<S>;

  // x rows are tokens (row r has position r % seq); head h occupies columns
  // [h * head_stride, (h + 1) * head_stride) and its rotary part starts at `offset` within it.
  // inverse = true rotates by the negative angle and undoes the layout: the backward pass.
  static void rope_apply(Tensor& x, Eigen::Index seq, Eigen::Index heads, Eigen::Index head_stride,
                         Eigen::Index offset, Eigen::Index rope_dim, double theta,
                         RopeLayout layout, bool inverse) {
    checks::rope(x, seq, heads, head_stride, offset, rope_dim, "ablate::CPU rope_apply");
    if (x.rows() == 0 || heads == 0 || rope_dim == 0) return;
    const Eigen::Index half = rope_dim / 2;
    std::vector<S> cos_table(static_cast<std::size_t>(seq * half));
    std::vector<S> sin_table(cos_table.size());
    for (Eigen::Index t = 0; t < seq; ++t)
      for (Eigen::Index i = 0; i < half; ++i) {
        const double freq = std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rope_dim));
        const double angle = static_cast<double>(t) * freq;
        cos_table[static_cast<std::size_t>(t * half + i)] = static_cast<S>(std::cos(angle));
        sin_table[static_cast<std::size_t>(t * half + i)] = static_cast<S>(std::sin(angle));
      }
    const S sign = inverse ? S(-1) : S(1);
    const Eigen::Index rows = x.rows();
    ParallelErrors errors;
    ABLATE_PARALLEL_FOR
    for (Eigen::Index r = 0; r < rows; ++r) errors.run([&] {
      const Eigen::Index t = r % seq;
      const S* c = cos_table.data() + t * half;
      const S* s = sin_table.data() + t * half;
      std::vector<S> tmp(static_cast<std::size_t>(rope_dim));
      for (Eigen::Index h = 0; h < heads; ++h) {
        S* v = x.row(r).data() + h * head_stride + offset;
        for (Eigen::Index i = 0; i < half; ++i) {
          // Source slots of the pair: interleaved input, or the DeepSeek output layout when
          // undoing it.
          const bool split = layout == RopeLayout::DeepSeek && inverse;
          const S a = split ? v[i] : v[2 * i];
          const S b = split ? v[i + half] : v[2 * i + 1];
          const S ra = a * c[i] - sign * b * s[i];
          const S rb = b * c[i] + sign * a * s[i];
          const bool to_split = layout == RopeLayout::DeepSeek && !inverse;
          tmp[static_cast<std::size_t>(to_split ? i : 2 * i)] = ra;
          tmp[static_cast<std::size_t>(to_split ? i + half : 2 * i + 1)] = rb;
        }
        for (Eigen::Index j = 0; j < rope_dim; ++j) v[j] = tmp[static_cast<std::size_t>(j)];
      }
    });
    errors.rethrow();
  }
};

}  // namespace ablate::cpu
