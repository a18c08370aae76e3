// Element-wise kernels the optimizers need beyond the tensor basics.  Each works on
// cache-sized chunks so the several passes of a fused update read memory once.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "ablate/backend/cpu/tensor.hpp"

namespace ablate::cpu {

template <class S>
struct OptimizerKernels {
  using Tensor = Matrix<S>;

  // One step of torch.optim.AdamW on one tensor, in torch's order of operations:
  //   p *= 1 - lr*wd;  m = lerp(m, g, 1 - beta1);  v = v*beta2 + (1 - beta2)*g*g;
  //   p -= lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps).
  // `step` is the 1-based count of steps taken, this one included.
  static void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, double lr,
                           double beta1, double beta2, double eps, double weight_decay,
                           std::int64_t step) {
    using Array = Eigen::Array<S, Eigen::Dynamic, 1>;
    constexpr Eigen::Index chunk = 4096;  // four chunks of this size stay within L2
    const double t = static_cast<double>(step);
    const S decay = static_cast<S>(1.0 - lr * weight_decay);
    const S w1 = static_cast<S>(1.0 - beta1);
    const S b2 = static_cast<S>(beta2);
    const S w2 = static_cast<S>(1.0 - beta2);
    const S step_size = static_cast<S>(lr / (1.0 - std::pow(beta1, t)));
    const S bc2_sqrt = static_cast<S>(std::sqrt(1.0 - std::pow(beta2, t)));
    const S e = static_cast<S>(eps);

    S* p = param.data();
    const S* g = grad.data();
    S* pm = m.data();
    S* pv = v.data();
    const Eigen::Index n = param.size();
    const Eigen::Index chunks = (n + chunk - 1) / chunk;
    ABLATE_PARALLEL_FOR
    for (Eigen::Index c = 0; c < chunks; ++c) {
      const Eigen::Index at = c * chunk, len = std::min(chunk, n - at);
      Eigen::Map<Array> ps(p + at, len), ms(pm + at, len), vs(pv + at, len);
      Eigen::Map<const Array> gs(g + at, len);
      ps *= decay;
      if (beta1 > 0.5)
        ms += w1 * (gs - ms);
      else  // torch's lerp switches formula at weight 0.5
        ms = gs - (gs - ms) * (S(1) - w1);
      vs = vs * b2 + (w2 * gs) * gs;
      ps -= step_size * (ms / (vs.sqrt() / bc2_sqrt + e));
    }
  }

  // out = a + w*(b - a), with torch's two-sided formula so w near 1 is exact (w = 1 gives b).
  // `out` may alias `a` or `b`.
  static void lerp(Tensor& out, const Tensor& a, const Tensor& b, double w) {
    const S ws = static_cast<S>(w);
    cpu::resize(out, a.rows(), a.cols());
    if (std::abs(w) < 0.5)
      out.array() = a.array() + ws * (b.array() - a.array());
    else
      out.array() = b.array() - (b.array() - a.array()) * (S(1) - ws);
  }
  // a = lerp(a, b, w): a momentum buffer's exponential moving average.
  static void lerp_inplace(Tensor& a, const Tensor& b, double w) { lerp(a, a, b, w); }

  // y = a*y + b*x: the linear combinations inside Newton-Schulz.
  static void scale_add(Tensor& y, double a, const Tensor& x, double b) {
    checks::shape(x, y.rows(), y.cols(), "scale_add", "x");
    y = static_cast<S>(a) * y + static_cast<S>(b) * x;
  }

  // dst = src^T (dst must not be src); batched, matrix g of the stack src [batch r, c]
  // transposed into matrix g of the stack dst [batch c, r].
  static void transpose(Tensor& dst, const Tensor& src, Eigen::Index batch = 1) {
    checks::stack(src, batch, "transpose", "src");
    const Eigen::Index r = src.rows() / batch;
    cpu::resize(dst, batch * src.cols(), r);
    if (batch == 1) {
      dst = src.transpose();
      return;
    }
    for_each_stacked(dst, src, batch,
                     [&](Tensor& out, const Tensor& g, Eigen::Index) { transpose(out, g); });
  }
};

}  // namespace ablate::cpu
