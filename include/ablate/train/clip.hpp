// Gradient clipping by global norm, as torch.nn.utils.clip_grad_norm_.
#pragma once

#include <cmath>
#include <vector>

#include "ablate/core/parameter.hpp"

namespace ablate {

// The L2 norm of all gradients together, accumulated in double.
// One reduction over all of them: a device backend reads back one number, not one per tensor.
template <class B>
double grad_norm(const ParameterStore<B>& store) {
  std::vector<const typename B::Tensor*> grads;
  for (const Parameter<B>& p : store) grads.push_back(&p.grad);
  return std::sqrt(B::sum_squares_all(grads));
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
