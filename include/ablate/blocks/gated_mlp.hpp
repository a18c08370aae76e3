// GatedMLP (SwiGLU, DeepseekV3MLP): down(silu(gate(x)) * up(x)), no biases.
#pragma once

#include <string>

#include "ablate/blocks/linear.hpp"
#include "ablate/core/config.hpp"
#include "ablate/core/context.hpp"

namespace ablate {

template <class B>
class GatedMLPBlock {
 public:
  using Tensor = typename B::Tensor;

  GatedMLPBlock() = default;
  GatedMLPBlock(ParameterStore<B>& store, Initializer& init, const std::string& name,
                std::size_t hidden, std::size_t width, ModuleOrigin origin = ModuleOrigin::DeepSeek)
      : gate_(store, init, name + ".gate_proj", hidden, width, false, origin),
        up_(store, init, name + ".up_proj", hidden, width, false, origin),
        down_(store, init, name + ".down_proj", width, hidden, false, origin) {}

  void forward(Tensor& y, const Tensor& x, const PassContext&) {
    gate_.forward(g_, x);
    up_.forward(u_, x);
    B::swiglu_forward(h_, g_, u_);
    down_.forward(y, h_);
  }
  void backward(Tensor& dx, const Tensor& dy) {
    down_.backward(&dh_, dy);
    B::swiglu_backward(dg_, du_, dh_, g_, u_);
    gate_.backward(&dx, dg_);
    up_.backward(&dx, du_, /*accumulate_dx=*/true);
  }

 private:
  Linear<B> gate_, up_, down_;
  Tensor g_, u_, h_, dh_, dg_, du_;
};

// Policy tag for FFN<GatedMLP>: width intermediate_size. `Origin` says which init the seed
// scheme gives it: a DeepSeek module's (PyTorch's default) unless told otherwise; the layout,
// and so the architecture's name, is the same either way.
template <ModuleOrigin Origin = ModuleOrigin::DeepSeek>
struct GatedMLPInit {
  template <class B>
  using Block = GatedMLPBlock<B>;
  static constexpr const char* name = "gated-mlp";
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg) {
    return Block<B>(store, init, name, cfg.hidden_size, cfg.intermediate_size, Origin);
  }
};
using GatedMLP = GatedMLPInit<>;

}  // namespace ablate
