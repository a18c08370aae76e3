// MLP (the seed's expert): down(dropout(silu(up(x)))), no biases.
#pragma once

#include <string>

#include "ablate/blocks/dropout.hpp"
#include "ablate/blocks/linear.hpp"
#include "ablate/core/config.hpp"

namespace ablate {

template <class B>
class MLPBlock {
 public:
  using Tensor = typename B::Tensor;

  MLPBlock() = default;
  MLPBlock(ParameterStore<B>& store, Initializer& init, const std::string& name,
           std::size_t hidden, std::size_t width, double dropout,
           ModuleOrigin origin = ModuleOrigin::Skeleton)
      : up_(store, init, name + ".up_proj", hidden, width, false, origin),
        down_(store, init, name + ".down_proj", width, hidden, false, origin),
        dropout_(dropout) {}

  void forward(Tensor& y, const Tensor& x, const PassContext& ctx) {
    up_.forward(pre_, x);
    B::silu_forward(act_, pre_);
    dropout_.forward(act_, ctx);
    down_.forward(y, act_);
  }
  void backward(Tensor& dx, const Tensor& dy) {
    down_.backward(&grad_act_, dy);
    dropout_.backward(grad_act_);
    B::silu_backward(grad_pre_, grad_act_, pre_);
    up_.backward(&dx, grad_pre_);
  }

 private:
  Linear<B> up_, down_;
  Dropout<B> dropout_;
  Tensor pre_, act_, grad_act_, grad_pre_;
};

// Policy tag for FFN<MLP>: width intermediate_size, dropout hidden_dropout.
struct MLP {
  template <class B>
  using Block = MLPBlock<B>;
  static constexpr const char* name = "mlp";
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg) {
    return Block<B>(store, init, name, cfg.hidden_size, cfg.intermediate_size, cfg.hidden_dropout);
  }
};

}  // namespace ablate
