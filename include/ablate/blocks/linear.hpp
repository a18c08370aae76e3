// Linear: y = x W^T + b, the building piece of every projection.  Keeps its input for the
// backward pass.
#pragma once

#include <string>

#include "ablate/core/init.hpp"
#include "ablate/core/parameter.hpp"

namespace ablate {

template <class B>
class Linear {
 public:
  using Tensor = typename B::Tensor;

  Linear() = default;
  Linear(ParameterStore<B>& store, Initializer& init, const std::string& name, std::size_t in,
         std::size_t out, bool bias, ModuleOrigin origin = ModuleOrigin::Skeleton) {
    weight_ = &store.add(name + ".weight", {out, in}, ParamRole::Matrix);
    init.linear_weight(*weight_, origin);
    if (bias) {
      bias_ = &store.add(name + ".bias", {out}, ParamRole::Bias);
      init.linear_bias(*bias_, in, origin);
    }
  }

  void forward(Tensor& y, const Tensor& x) {
    B::copy(input_, x);
    B::linear_forward(y, x, weight_->value, bias_ ? &bias_->value : nullptr);
  }

  // Accumulates dW and db; writes dx (adds to it when accumulate_dx).  dx may be null.
  void backward(Tensor* dx, const Tensor& dy, bool accumulate_dx = false) {
    B::linear_backward(dx, weight_->grad, bias_ ? &bias_->grad : nullptr, dy, input_,
                       weight_->value, accumulate_dx);
  }

  std::size_t in_features() const { return weight_->shape[1]; }
  std::size_t out_features() const { return weight_->shape[0]; }
  Parameter<B>& weight() { return *weight_; }

 private:
  Parameter<B>* weight_ = nullptr;
  Parameter<B>* bias_ = nullptr;
  Tensor input_;
};

}  // namespace ablate
