// The expert parts of an MoE: how a routed expert of a given width is built from an FFN policy
// tag, and whether the MoE has shared experts.
#pragma once

#include <cstddef>
#include <string>

#include "ablate/blocks/gated_mlp.hpp"
#include "ablate/blocks/mlp.hpp"
#include "ablate/core/config.hpp"
#include "ablate/core/init.hpp"
#include "ablate/core/parameter.hpp"

namespace ablate {

// ExpertFactory<Policy>::make<B>(store, init, name, cfg, width) builds one expert of `width`.
// Specialise it to use another FFN block as an expert; the block needs forward(y, x, ctx) and
// backward(dx, dy) like every FFN block.
template <class Policy>
struct ExpertFactory;

// The seed's Expert: down(dropout(silu(up(x)))), inner dropout hidden_dropout, normal init.
template <>
struct ExpertFactory<MLP> {
  template <class B>
  using Block = MLPBlock<B>;
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg, std::size_t width) {
    return Block<B>(store, init, name, cfg.hidden_size, width, cfg.hidden_dropout);
  }
};

// DeepseekV3MLP / Glm4MoeMLP: down(silu(gate(x)) * up(x)), initialised as a DeepSeek module.
template <>
struct ExpertFactory<GatedMLP> {
  template <class B>
  using Block = GatedMLPBlock<B>;
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg, std::size_t width) {
    return Block<B>(store, init, name, cfg.hidden_size, width);
  }
};

// No shared experts, whatever the config says (the seed baseline, Experiment 5's gated MoE).
struct NoSharedExperts {
  static constexpr bool enabled = false;
  static constexpr const char* name = "noshared";
};

// DeepSeek-V3 / GLM4 shared experts: one GatedMLP of width n_shared_experts *
// moe_intermediate_size seen by every token, its output added to the routed output.  None
// when n_shared_experts is 0.
struct SharedExperts {
  static constexpr bool enabled = true;
  static constexpr const char* name = "shared";
  using expert = GatedMLP;
};

namespace detail {

// The expert policy of a shared-experts policy (GatedMLP where it names none).
template <class Shared>
struct shared_expert_of {
  using type = GatedMLP;
};
template <class Shared>
  requires requires { typename Shared::expert; }
struct shared_expert_of<Shared> {
  using type = typename Shared::expert;
};

}  // namespace detail

}  // namespace ablate
