// AdamW as torch.optim.AdamW computes it: decoupled weight decay, bias-corrected moments.
// The learning rate is passed to every step, so a schedule stays outside the optimizer.
#pragma once

#include <vector>

#include "ablate/core/error.hpp"
#include "ablate/core/parameter.hpp"
#include "ablate/train/optimizer_state.hpp"

namespace ablate {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.1;  // the seed recipe's value (torch's own default is 0.01)
};

// Per-parameter state, public so a checkpoint can save and restore it.
template <class B>
struct AdamWState {
  Parameter<B>* param;
  typename B::Tensor m;  // first moment (torch: exp_avg)
  typename B::Tensor v;  // second moment (torch: exp_avg_sq)
};

// steps() counts the steps taken (torch keeps the same count per parameter as state["step"]).
template <class B>
class AdamW : public OptimizerCore<AdamWState<B>, AdamWOptions> {
 public:
  using Tensor = typename B::Tensor;
  using State = AdamWState<B>;

  explicit AdamW(std::vector<Parameter<B>*> params, AdamWOptions options = {})
      : OptimizerCore<State, AdamWOptions>(options) {
    require(options.beta1 >= 0.0 && options.beta1 < 1.0, "AdamW: beta1 must be in [0, 1)");
    require(options.beta2 >= 0.0 && options.beta2 < 1.0, "AdamW: beta2 must be in [0, 1)");
    require_finite_positive(options.eps, "AdamW: eps");
    require_finite_non_negative(options.weight_decay, "AdamW: weight_decay");
    this->states_.reserve(params.size());
    for (Parameter<B>* p : params) {
      require(p != nullptr, "AdamW: null parameter");
      State& s = this->states_.emplace_back(State{p, Tensor{}, Tensor{}});
      B::resize(s.m, p->rows(), p->cols());
      B::resize(s.v, p->rows(), p->cols());
      B::set_zero(s.m);
      B::set_zero(s.v);
    }
  }

  // One update of every parameter from its current .grad at learning rate `lr`.
  void step(double lr) {
    const AdamWOptions& o = this->options_;
    ++this->steps_;
    for (State& s : this->states_)
      B::adamw_update(s.param->value, s.param->grad, s.m, s.v, lr, o.beta1, o.beta2, o.eps,
                      o.weight_decay, this->steps_);
  }
};

}  // namespace ablate
