// RMSNorm (no bias): y = x / sqrt(mean(x^2) + eps) * w.
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
class RMSNorm {
 public:
  using Tensor = typename B::Tensor;

  RMSNorm() = default;
  RMSNorm(ParameterStore<B>& store, Initializer& init, const std::string& name, std::size_t dim,
          double eps)
      : eps_(eps) {
    require_finite_positive(eps, "RMSNorm ", name, ": eps");
    weight_ = &store.add(name + ".weight", {dim}, ParamRole::Norm);
    init.ones(*weight_);
  }

  void forward(Tensor& y, const Tensor& x) {
    B::copy(input_, x);
    B::rmsnorm_forward(y, rstd_, x, weight_->value, eps_);
  }
  void backward(Tensor& dx, const Tensor& dy) {
    B::rmsnorm_backward(dx, weight_->grad, dy, input_, weight_->value, rstd_);
  }

 private:
  Parameter<B>* weight_ = nullptr;
  double eps_ = 1e-6;
  Tensor input_, rstd_;
};

// Policy tag for Norm<RMS>.
struct RMS {
  template <class B>
  using Block = RMSNorm<B>;
  static constexpr const char* name = "rms";
  static std::vector<std::string_view> config_fields() { return {"rms_norm_eps"}; }
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg) {
    return Block<B>(store, init, name, cfg.hidden_size, cfg.rms_norm_eps);
  }
};

}  // namespace ablate
