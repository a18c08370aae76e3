// Mixture of experts as an FFN: FFN<MoE<E, K, Router, Experts, Shared>>.
//
//   E, K     routed experts and experts per token (n_routed_experts, num_experts_per_tok)
//   Router   SeedRouter | Glm4Router | SoftmaxTopKRouter   (blocks/moe/*_router.hpp)
//   Experts  MLP | GatedMLP (or any policy with an ExpertFactory), width moe_intermediate_size
//   Shared   SharedExperts (n_shared_experts GatedMLP, width n_shared * moe_intermediate_size)
//            | NoSharedExperts
//
// The defaults are the DeepSeek-V3 / GLM4 MoE: FFN<MoE<8, 2>> is Glm4MoE<8, 2>.
//
// Forward: the router picks K experts and weights per token; the slots are grouped by expert,
// each expert runs once on its gathered tokens (its GEMMs sized by its load, so the cost
// scales with K/E), and its outputs are scatter-added back weighted by the combine weights;
// shared experts run on every token and are added.  Backward follows the same plan: each
// expert gets its weighted output gradient, the combine weights get dy . expert output, and
// the router turns those into gradients of its gate (and of x), adding its aux-loss gradient.
//
// Parameters (HF names, under the block's prefix, e.g. layers.0.mlp):
//   gate.weight, experts.<e>.{gate_proj,up_proj,down_proj}.weight (MLP experts: up_proj,
//   down_proj), shared_experts.{gate_proj,up_proj,down_proj}.weight
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "ablate/blocks/moe/experts.hpp"
#include "ablate/blocks/moe/glm4_router.hpp"
#include "ablate/blocks/moe/seed_router.hpp"
#include "ablate/blocks/moe/softmax_router.hpp"
#include "ablate/core/config.hpp"
#include "ablate/core/dimensions.hpp"
#include "ablate/core/context.hpp"
#include "ablate/core/error.hpp"
#include "ablate/core/operand_checks.hpp"

namespace ablate {

template <class B, std::size_t E, std::size_t K, class RouterPolicy, class ExpertPolicy,
          class SharedPolicy>
class MoEBlock {
 public:
  using Tensor = typename B::Tensor;
  using Indices = typename B::Indices;
  using RouterBlock = typename RouterPolicy::template Block<B>;
  using ExpertBlock = typename ExpertFactory<ExpertPolicy>::template Block<B>;
  using SharedExpertPolicy = typename detail::shared_expert_of<SharedPolicy>::type;
  using SharedBlock = typename ExpertFactory<SharedExpertPolicy>::template Block<B>;
  static constexpr std::size_t experts_count = E;
  static constexpr std::size_t top_k = K;

  MoEBlock(ParameterStore<B>& store, Initializer& init, const std::string& name,
           const ModelConfig& cfg)
      : width_(checked_width(cfg)),
        router_(RouterPolicy::template make<B>(store, init, name, cfg, E, K)) {
    // The router checks its own settings before anything is registered.
    experts_.reserve(E);
    for (std::size_t e = 0; e < E; ++e)
      experts_.push_back(ExpertFactory<ExpertPolicy>::template make<B>(
          store, init, name + ".experts." + std::to_string(e), cfg, width_));
    if constexpr (SharedPolicy::enabled) {
      if (cfg.n_shared_experts > 0) {
        has_shared_ = true;
        shared_ = ExpertFactory<SharedExpertPolicy>::template make<B>(
            store, init, name + ".shared_experts", cfg,
            dimension_product(cfg.n_shared_experts, width_, "MoE: n_shared_experts x moe_intermediate_size"));
      }
    }
    ran_.assign(E, false);
    outputs_.resize(E);
  }

  void forward(Tensor& y, const Tensor& x, const PassContext& ctx) {
    forward_shape_ = {-1, -1};  // until this forward has succeeded
    // The dispatch plan numbers the (token, choice) slots with 32-bit indices.
    dimension_product(static_cast<std::size_t>(x.rows()), K, "MoE: tokens x experts per token");
    router_.forward(x, ctx);
    B::moe_dispatch_plan(rows_, slots_, offsets_, router_.indices(), E, K);
    B::resize(y, x.rows(), x.cols());
    B::set_zero(y);
    for (std::size_t e = 0; e < E; ++e) {
      const std::size_t count = offsets_[e + 1] - offsets_[e];
      ran_[e] = count > 0;
      if (!ran_[e]) continue;
      B::gather_rows(batch_, x, rows_, offsets_[e], count);
      experts_[e].forward(outputs_[e], batch_, ctx);
      B::scatter_add_rows_weighted(y, outputs_[e], rows_, slots_, router_.weights(), offsets_[e]);
    }
    if (has_shared_) {
      shared_.forward(shared_out_, x, ctx);
      B::add_inplace(y, shared_out_);
    }
    forward_shape_ = {x.rows(), x.cols()};
  }

  void backward(Tensor& dx, const Tensor& dy) {
    // The routing (rows_, slots_, offsets_) indexes the forward's tokens: dy must match them.
    require(forward_shape_.first >= 0, "MoE backward: no forward to go back through");
    checks::shape(dy, forward_shape_.first, forward_shape_.second, "MoE backward", "dy");
    B::resize(dx, dy.rows(), dy.cols());
    B::set_zero(dx);
    B::resize(dweights_, dy.rows(), static_cast<std::ptrdiff_t>(K));
    B::set_zero(dweights_);
    for (std::size_t e = 0; e < E; ++e) {
      if (!ran_[e]) continue;
      const std::size_t count = offsets_[e + 1] - offsets_[e];
      B::gather_row_dots(dweights_, dy, outputs_[e], rows_, slots_, offsets_[e]);
      B::gather_rows_weighted(batch_, dy, rows_, slots_, router_.weights(), offsets_[e], count);
      experts_[e].backward(dbatch_, batch_);
      B::scatter_add_rows(dx, dbatch_, rows_, offsets_[e]);
    }
    if (has_shared_) {
      shared_.backward(dshared_, dy);
      B::add_inplace(dx, dshared_);
    }
    router_.backward(dx, dweights_);
  }

  // The router's auxiliary loss of the last forward (0 in eval or for routers without one).
  double aux_loss() const { return router_.aux_loss(); }

  void after_optimizer_step() {
    if constexpr (requires(RouterBlock& r) { r.after_optimizer_step(); })
      router_.after_optimizer_step();
  }
  void discard_accumulation_group() {
    if constexpr (requires(RouterBlock& r) { r.discard_accumulation_group(); })
      router_.discard_accumulation_group();
  }

  // Slots routed to each expert in the last forward; sums to tokens * K.
  const std::vector<std::size_t>& expert_load() const { return router_.load(); }
  const Indices& routing_indices() const { return router_.indices(); }
  const Tensor& routing_weights() const { return router_.weights(); }

  RouterBlock& router() { return router_; }
  const RouterBlock& router() const { return router_; }
  std::vector<ExpertBlock>& experts() { return experts_; }
  bool has_shared_experts() const { return has_shared_; }
  SharedBlock& shared_experts() { return shared_; }
  std::size_t expert_width() const { return width_; }

 private:
  static std::size_t checked_width(const ModelConfig& cfg) {
    require(K > 0, "MoE: top_k must be > 0");
    require(K <= E, "MoE: top_k (", K, ") exceeds the number of experts (", E, ")");
    require(cfg.moe_intermediate_size > 0, "MoE: moe_intermediate_size must be > 0");
    require_dimension(cfg.moe_intermediate_size, "MoE: moe_intermediate_size");
    return cfg.moe_intermediate_size;
  }

  std::size_t width_ = 0;
  RouterBlock router_;
  std::vector<ExpertBlock> experts_;
  bool has_shared_ = false;
  SharedBlock shared_;

  Indices rows_, slots_;
  std::vector<std::size_t> offsets_;
  std::vector<bool> ran_;
  std::pair<std::ptrdiff_t, std::ptrdiff_t> forward_shape_{-1, -1};  // x of the last forward
  std::vector<Tensor> outputs_;  // each expert's output on its batch, for the weight gradients
  Tensor batch_, dbatch_, dweights_, shared_out_, dshared_;
};

namespace detail {

// A policy name built at compile time: "moe<E>x<K>-<router>", then "-<experts>" and "-shared" /
// "-noshared" only where they differ from the router's usual company (MLP experts without
// shared experts for the seed router, GatedMLP for the others, shared experts for GLM4).
struct MoEName {
  char text[96]{};
  std::size_t size = 0;

  constexpr void append(const char* s) {
    while (*s != '\0' && size + 1 < sizeof(text)) text[size++] = *s++;
  }
  constexpr void append(std::size_t v) {
    char digits[24]{};
    int n = 0;
    do {
      digits[n++] = static_cast<char>('0' + v % 10);
      v /= 10;
    } while (v != 0);
    while (n > 0 && size + 1 < sizeof(text)) text[size++] = digits[--n];
  }
};

template <class Router>
struct usual_moe_parts {
  using experts = GatedMLP;
  static constexpr bool shared = false;
};
template <>
struct usual_moe_parts<SeedRouter> {
  using experts = MLP;
  static constexpr bool shared = false;
};
template <>
struct usual_moe_parts<Glm4Router> {
  using experts = GatedMLP;
  static constexpr bool shared = true;
};

template <std::size_t E, std::size_t K, class Router, class Experts, class Shared>
constexpr MoEName make_moe_name() {
  MoEName n;
  n.append("moe");
  n.append(E);
  n.append("x");
  n.append(K);
  n.append("-");
  n.append(Router::name);
  if (!std::is_same_v<Experts, typename usual_moe_parts<Router>::experts>) {
    n.append("-");
    n.append(Experts::name);
  }
  if (Shared::enabled != usual_moe_parts<Router>::shared) {
    n.append("-");
    n.append(Shared::name);
  }
  return n;
}

}  // namespace detail

// Policy tag for FFN<MoE<...>>.
template <std::size_t E, std::size_t K, class Router = Glm4Router, class Experts = GatedMLP,
          class Shared = SharedExperts>
struct MoE {
  using router = Router;
  using experts_policy = Experts;
  using shared_policy = Shared;
  static constexpr std::size_t n_routed_experts = E;
  static constexpr std::size_t num_experts_per_tok = K;

  template <class B>
  using Block = MoEBlock<B, E, K, Router, Experts, Shared>;

  static constexpr detail::MoEName name_text = detail::make_moe_name<E, K, Router, Experts, Shared>();
  static constexpr const char* name = name_text.text;
  static std::vector<std::string_view> config_fields() { return policy_config_fields<Router>(); }

  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg) {
    return Block<B>(store, init, name, cfg);
  }
};

// The MoEs the experiments name.
// Seed baseline: MLP experts (inner dropout), noisy softmax router with the load-balancing
// loss, no shared experts.  "moe<E>x<K>-seed"
template <std::size_t E, std::size_t K>
using SeedMoE = MoE<E, K, SeedRouter, MLP, NoSharedExperts>;
// GLM4 MoE (what Experiment 1's name promised): sigmoid group-limited router, GatedMLP experts,
// shared experts per config.  "moe<E>x<K>-glm4"
template <std::size_t E, std::size_t K>
using Glm4MoE = MoE<E, K, Glm4Router, GatedMLP, SharedExperts>;
// DeepSeek-V3's MoE layer is the same construction.
template <std::size_t E, std::size_t K>
using DeepSeekV3MoE = Glm4MoE<E, K>;
// Experiment 5's gated MoE: plain softmax top-K gate with the variance aux loss, GatedMLP
// experts, no shared experts.  "moe<E>x<K>-softmax"
template <std::size_t E, std::size_t K>
using Exp5GatedMoE = MoE<E, K, SoftmaxTopKRouter, GatedMLP, NoSharedExperts>;

}  // namespace ablate
