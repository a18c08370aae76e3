// What every MoE router shares: the gate projection (`<prefix>.gate.weight`, [E, d], no bias),
// the routing it produces and the per-expert load of the last forward.
//
// A router policy tag provides
//   template <class B> using Block = ...;
//   static constexpr const char* name;
//   template <class B> static Block<B> make(store, init, prefix, cfg, experts, top_k);
// and its block
//   void forward(const Tensor& x, const PassContext& ctx);   // routing of x [N, d]
//   void backward(Tensor& dx, const Tensor& dweights);       // dx += d/dx; router grads
//   const Indices& indices() const;   // [N*K] chosen experts, slot n*K + k
//   const Tensor& weights() const;    // [N, K] combine weights
//   const Tensor& selection_scores() const;  // [N, E] what top-K was taken over
//   const std::vector<std::size_t>& load() const;  // slots per expert, sums to N*K
//   double aux_loss() const;          // 0 when the router has none or in eval
// optionally void after_optimizer_step() and void discard_accumulation_group() (state kept
// between optimizer steps: the trainer's hooks).
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <vector>

#include "ablate/blocks/linear.hpp"
#include "ablate/core/config.hpp"
#include "ablate/core/context.hpp"
#include "ablate/core/error.hpp"

namespace ablate::detail {

template <class B>
class RouterCore {
 public:
  using Tensor = typename B::Tensor;
  using Indices = typename B::Indices;

  const Indices& indices() const { return indices_; }
  const Tensor& weights() const { return weights_; }
  const Tensor& logits() const { return logits_; }
  const std::vector<std::size_t>& load() const { return load_; }
  double aux_loss() const { return aux_; }
  std::size_t experts() const { return experts_; }
  std::size_t top_k() const { return k_; }
  Linear<B>& gate() { return gate_; }

 protected:
  RouterCore() = default;
  RouterCore(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
             const ModelConfig& cfg, std::size_t experts, std::size_t k)
      : experts_(experts),
        k_(k),
        gate_(store, init, prefix + ".gate", cfg.hidden_size, experts, /*bias=*/false),
        load_(experts, 0) {
    require_finite_non_negative(cfg.router_aux_loss_coef, "MoE router: router_aux_loss_coef");
  }

  std::ptrdiff_t E() const { return static_cast<std::ptrdiff_t>(experts_); }
  std::ptrdiff_t K() const { return static_cast<std::ptrdiff_t>(k_); }
  void count_load() { B::moe_expert_counts(load_, indices_, experts_); }
  // d[n, e] += per_expert[e] for every token n: an auxiliary loss's gradient with respect to
  // the probabilities, which is the same for every token.
  void add_per_expert(Tensor& d, const std::vector<double>& per_expert) {
    B::resize(expert_row_, 1, E());
    B::from_host(expert_row_, per_expert);
    B::add_row_broadcast(d, expert_row_);
  }

  std::size_t experts_ = 0, k_ = 0;
  Linear<B> gate_;
  Tensor logits_, weights_, dlogits_;
  Tensor expert_row_;
  Indices indices_;
  std::vector<std::size_t> load_;
  double aux_ = 0.0;
};

}  // namespace ablate::detail
