// AdamW as torch.optim.AdamW computes it: decoupled weight decay, bias-corrected moments.
// The learning rate is passed to every step, so a schedule stays outside the optimizer.
#pragma once

#include <cstdint>
#include <string>
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

template <class B>
class AdamW {
 public:
  using Tensor = typename B::Tensor;

  // Per-parameter state, public so a checkpoint can save and restore it.
  struct State {
    Parameter<B>* param;
    Tensor m;  // first moment (torch: exp_avg)
    Tensor v;  // second moment (torch: exp_avg_sq)
  };

  explicit AdamW(std::vector<Parameter<B>*> params, AdamWOptions options = {})
      : options_(options) {
    require(options.beta1 >= 0.0 && options.beta1 < 1.0, "AdamW: beta1 must be in [0, 1)");
    require(options.beta2 >= 0.0 && options.beta2 < 1.0, "AdamW: beta2 must be in [0, 1)");
    require(options.eps > 0.0, "AdamW: eps must be > 0");
    require(options.weight_decay >= 0.0, "AdamW: weight_decay must be >= 0");
    states_.reserve(params.size());
    for (Parameter<B>* p : params) {
      require(p != nullptr, "AdamW: null parameter");
      State& s = states_.emplace_back(State{p, Tensor{}, Tensor{}});
      B::resize(s.m, p->rows(), p->cols());
      B::resize(s.v, p->rows(), p->cols());
      B::set_zero(s.m);
      B::set_zero(s.v);
    }
  }

  // One update of every parameter from its current .grad at learning rate `lr`.
  void step(double lr) {
    ++steps_;
    for (State& s : states_)
      B::adamw_update(s.param->value, s.param->grad, s.m, s.v, lr, options_.beta1,
                      options_.beta2, options_.eps, options_.weight_decay, steps_);
  }

  const AdamWOptions& options() const { return options_; }
  std::vector<State>& states() { return states_; }
  const std::vector<State>& states() const { return states_; }
  // The state of the parameter called `name`, or null.
  State* find(const std::string& name) { return find_state(states_, name); }
  // Steps taken so far (torch keeps the same count per parameter as state["step"]).
  std::int64_t steps() const { return steps_; }
  void set_steps(std::int64_t steps) { steps_ = steps; }

 private:
  AdamWOptions options_;
  std::vector<State> states_;
  std::int64_t steps_ = 0;
};

}  // namespace ablate
