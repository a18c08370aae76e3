// LayerNorm with bias: y = (x - mean) / sqrt(var + eps) * w + b.
#pragma once

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "ablate/core/init.hpp"
#include "ablate/core/config.hpp"
#include "ablate/core/parameter.hpp"

namespace ablate {

template <class B>
class LayerNorm {
 public:
  using Tensor = typename B::Tensor;

  LayerNorm() = default;
  LayerNorm(ParameterStore<B>& store, Initializer& init, const std::string& name,
            std::size_t dim, double eps)
      : eps_(eps) {
    require_finite_positive(eps, "LayerNorm ", name, ": eps");
    weight_ = &store.add(name + ".weight", {dim}, ParamRole::Norm);
    bias_ = &store.add(name + ".bias", {dim}, ParamRole::Norm);
    init.ones(*weight_);
    init.zeros(*bias_);
  }

  void forward(Tensor& y, const Tensor& x) {
    B::copy(input_, x);
    B::layernorm_forward(y, mean_, rstd_, x, weight_->value, bias_->value, eps_);
  }
  void backward(Tensor& dx, const Tensor& dy) {
    B::layernorm_backward(dx, weight_->grad, bias_->grad, dy, input_, weight_->value, mean_,
                          rstd_);
  }

 private:
  Parameter<B>* weight_ = nullptr;
  Parameter<B>* bias_ = nullptr;
  double eps_ = 1e-5;
  Tensor input_, mean_, rstd_;
};

// Policy tag for Norm<LN>.
struct LN {
  template <class B>
  using Block = LayerNorm<B>;
  static constexpr const char* name = "layernorm";
  static std::vector<std::string_view> config_fields() { return {"layer_norm_eps"}; }
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg) {
    return Block<B>(store, init, name, cfg.hidden_size, cfg.layer_norm_eps);
  }
};

}  // namespace ablate
