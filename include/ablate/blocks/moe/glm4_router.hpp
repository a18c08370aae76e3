// The GLM4 / DeepSeek-V3 router (HF Glm4MoeMoE.route_tokens_to_experts, DeepseekV3's
// "noaux_tc"): scores = sigmoid(gate(x)); choice = scores + e_score_correction_bias; group score
// = sum of the two largest choices in each of n_group groups; the topk_group best groups are
// kept and the rest masked to -inf; top-K of the masked choices; weights = scores (without the
// bias) at the chosen experts, divided by (their sum + 1e-20) when norm_topk_prob, times
// routed_scaling_factor.  No auxiliary loss.
//
// e_score_correction_bias is a buffer, not a trained parameter (zeros initially).  With
// router_bias_update_rate = gamma > 0 it implements DeepSeek-V3's auxiliary-loss-free
// balancing: after each optimizer step, bias[e] += gamma * sign(mean load - load[e]), the loads
// counted over the training forwards since the previous step.
#pragma once

#include <cmath>
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "ablate/blocks/moe/router.hpp"

namespace ablate {

template <class B>
class Glm4RouterBlock : public detail::RouterCore<B> {
  using Core = detail::RouterCore<B>;

 public:
  using typename Core::Tensor;

  Glm4RouterBlock() = default;
  Glm4RouterBlock(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
                  const ModelConfig& cfg, std::size_t experts, std::size_t k)
      : Core(store, init, prefix, cfg, checked(cfg, experts, k), k),
        n_group_(cfg.n_group),
        topk_group_(cfg.topk_group),
        norm_topk_prob_(cfg.norm_topk_prob),
        scaling_(cfg.routed_scaling_factor),
        rate_(cfg.router_bias_update_rate),
        pending_load_(experts, 0) {
    B::resize(bias_, 1, this->E());
    B::set_zero(bias_);
  }

  void forward(const Tensor& x, const PassContext& ctx) {
    this->gate_.forward(this->logits_, x);
    B::sigmoid_forward(scores_, this->logits_);
    B::copy(choice_, scores_);
    B::add_row_broadcast(choice_, bias_);
    B::group_limited_topk(this->indices_, masked_, group_scores_, choice_,
                          static_cast<std::ptrdiff_t>(n_group_),
                          static_cast<std::ptrdiff_t>(topk_group_), this->K());
    B::gather_columns(picked_, scores_, this->indices_, this->K());
    if (norm_topk_prob_) {
      B::normalize_rows(this->weights_, picked_, kDenominatorEps, scaling_);
    } else {
      B::copy(this->weights_, picked_);
      B::scale_inplace(this->weights_, scaling_);
    }
    this->count_load();
    if (ctx.training)
      for (std::size_t e = 0; e < pending_load_.size(); ++e) pending_load_[e] += this->load_[e];
    this->aux_ = 0.0;
  }

  void backward(Tensor& dx, const Tensor& dweights) {
    if (norm_topk_prob_) {
      B::normalize_rows_backward(dpicked_, dweights, picked_, kDenominatorEps, scaling_);
    } else {
      B::copy(dpicked_, dweights);
      B::scale_inplace(dpicked_, scaling_);
    }
    B::scatter_columns(dscores_, dpicked_, this->indices_, this->E());
    B::sigmoid_backward(this->dlogits_, dscores_, scores_);
    this->gate_.backward(&dx, this->dlogits_, /*accumulate_dx=*/true);
  }

  // Auxiliary-loss-free bias update (a no-op unless router_bias_update_rate > 0).
  void after_optimizer_step() {
    bool any = false;
    for (std::size_t l : pending_load_) any = any || l > 0;
    if (rate_ > 0.0 && any) B::moe_balance_bias(bias_, pending_load_, rate_);
    pending_load_.assign(pending_load_.size(), 0);
  }
  // The trainer dropped the batches since the last optimizer step: their loads go with them.
  void discard_accumulation_group() { pending_load_.assign(pending_load_.size(), 0); }

  // Top-K was taken over the group-masked choice scores.
  const Tensor& selection_scores() const { return masked_; }
  const Tensor& scores() const { return scores_; }
  const Tensor& group_scores() const { return group_scores_; }
  Tensor& e_score_correction_bias() { return bias_; }
  const Tensor& e_score_correction_bias() const { return bias_; }
  // Loads counted since the last optimizer step (training forwards only).
  const std::vector<std::size_t>& pending_load() const { return pending_load_; }
  // Restores the loads counted since the last optimizer step (checkpoint resume).
  void set_pending_load(const std::vector<std::size_t>& load) {
    require(load.size() == pending_load_.size(), "GLM4 router: pending load has ", load.size(),
            " entries, the router has ", pending_load_.size(), " experts");
    pending_load_ = load;
  }

 private:
  static constexpr double kDenominatorEps = 1e-20;

  static std::size_t checked(const ModelConfig& cfg, std::size_t experts, std::size_t k) {
    require(cfg.n_group > 0 && experts % cfg.n_group == 0, "MoE GLM4 router: n_group (",
            cfg.n_group, ") must divide the number of experts (", experts, ")");
    require(cfg.topk_group > 0 && cfg.topk_group <= cfg.n_group,
            "MoE GLM4 router: topk_group (", cfg.topk_group, ") must be in [1, n_group = ",
            cfg.n_group, "]");
    require(cfg.topk_group * (experts / cfg.n_group) >= k, "MoE GLM4 router: the ",
            cfg.topk_group, " kept groups of ", experts / cfg.n_group,
            " experts hold fewer than top_k = ", k, " experts");
    require_finite_non_negative(cfg.router_bias_update_rate,
                                "MoE GLM4 router: router_bias_update_rate");
    require_finite_positive(cfg.routed_scaling_factor, "MoE GLM4 router: routed_scaling_factor");
    return experts;
  }

  std::size_t n_group_ = 1, topk_group_ = 1;
  bool norm_topk_prob_ = true;
  double scaling_ = 1.0, rate_ = 0.0;
  std::vector<std::size_t> pending_load_;
  Tensor bias_, scores_, choice_, masked_, group_scores_, picked_;
  Tensor dpicked_, dscores_;
};

// Router policy (b), with (d) when router_bias_update_rate > 0.
struct Glm4Router {
  template <class B>
  using Block = Glm4RouterBlock<B>;
  static constexpr const char* name = "glm4";
  static std::vector<std::string_view> config_fields() {
    return {"n_group", "topk_group", "norm_topk_prob", "routed_scaling_factor"};
  }
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
                       const ModelConfig& cfg, std::size_t experts, std::size_t k) {
    return Block<B>(store, init, prefix, cfg, experts, k);
  }
};

}  // namespace ablate
