// Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_.
#pragma once

#include <cmath>

#include "ablate/core/parameter.hpp"

namespace ablate {

// The L2 norm of all gradients together, accumulated in double.
template <class B>
double grad_norm(const ParameterStore<B>& store) {
  double sum = 0.0;
  for (const Parameter<B>& p : store) sum += B::sum_squares(p.grad);
  return std::sqrt(sum);
}

// Scales every gradient by max_norm / (norm + 1e-6) when that is below 1; returns the norm
// before clipping.  max_norm <= 0 only measures.
template <class B>
double clip_grad_norm(ParameterStore<B>& store, double max_norm) {
  const double total = grad_norm(store);
  if (max_norm <= 0.0) return total;
  const double coef = max_norm / (total + 1e-6);
  if (coef < 1.0)
    for (Parameter<B>& p : store) B::scale_inplace(p.grad, coef);
  return total;
}

}  // namespace ablate
