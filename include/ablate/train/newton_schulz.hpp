// Newton-Schulz orthogonalisation (Keller Jordan's quintic iteration used by Muon): pushes
// every singular value of G towards 1, approximating U V^T from G's SVD with matmuls only.
#pragma once

#include <cstddef>

#include "ablate/core/error.hpp"

namespace ablate {

// Scratch tensors, kept between calls so repeated orthogonalisation does not reallocate.
template <class B>
struct NewtonSchulzWork {
  typename B::Tensor x, a, b, bx;
};

// out = NS5(g) for a rows x cols matrix g, `steps` iterations.  The coefficients
// (3.4445, -4.7750, 2.0315) make the iteration converge fast on small singular values at the
// cost of leaving them in roughly [0.7, 1.2] rather than exactly 1.  With batch > 1, g is a
// stack of `batch` such matrices along its rows (matrix i in rows [i rows, (i + 1) rows)) and
// out the stack of their NS5: every product is one batched GEMM for all of them.
template <class B>
void newton_schulz5(typename B::Tensor& out, const typename B::Tensor& g, std::size_t rows,
                    std::size_t cols, int steps, NewtonSchulzWork<B>& work,
                    std::size_t batch = 1) {
  constexpr double ca = 3.4445, cb = -4.7750, cc = 2.0315;
  require(steps >= 0, "newton_schulz5: steps must be >= 0");
  require(batch >= 1 && static_cast<std::size_t>(g.rows()) == batch * rows &&
              static_cast<std::size_t>(g.cols()) == cols,
          "newton_schulz5: g is [", g.rows(), ", ", g.cols(), "], not a stack of ", batch, " [",
          rows, ", ", cols, "] matrices");
  const auto n = static_cast<std::ptrdiff_t>(batch);
  // Work on the wide orientation so the Gram matrix X X^T is the small one.
  const bool tall = rows > cols;
  auto& x = work.x;
  if (tall) {
    B::transpose(x, g, n);
  } else {
    B::resize(x, g.rows(), g.cols());
    B::copy(x, g);
  }
  B::normalize_frobenius(x, 1e-7, n);
  // The second combination stays a separate scale_add: folded into the GEMM its terms would
  // be added in the other order, which changes the CPU's rounding where the compiler contracts
  // a*b + c*d into an FMA.
  for (int i = 0; i < steps; ++i) {
    B::gram(work.a, x, n);                                    // A = X X^T
    B::matmul_add(work.b, work.a, work.a, cc, work.a, cb, n);  // B = b A + c A A
    B::matmul(work.bx, work.b, x, n);                         // B X
    B::scale_add(x, ca, work.bx, 1.0);                        // X = a X + B X
  }
  if (tall) {
    B::transpose(out, x, n);
  } else {
    B::resize(out, g.rows(), g.cols());
    B::copy(out, x);
  }
}

template <class B>
void newton_schulz5(typename B::Tensor& out, const typename B::Tensor& g, std::size_t rows,
                    std::size_t cols, int steps = 5) {
  NewtonSchulzWork<B> work;
  newton_schulz5<B>(out, g, rows, cols, steps, work);
}

}  // namespace ablate
