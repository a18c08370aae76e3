// The seed baseline's router: logits = gate(x); in training, Gaussian noise of std
// router_noise_std is added (one key per forward); probs = softmax over all E of the noisy
// logits; top-K by noisy logits; combine weights = softmax over the K selected logits.
// In training only, the load-balancing loss
//   aux = router_aux_loss_coef * E * sum_e f_e * P_e,
// f_e = fraction of the N*K slots routed to e (a constant), P_e = mean over tokens of probs[:, e].
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "ablate/blocks/moe/router.hpp"

namespace ablate {

template <class B>
class SeedRouterBlock : public detail::RouterCore<B> {
  using Core = detail::RouterCore<B>;

 public:
  using typename Core::Tensor;

  SeedRouterBlock() = default;
  SeedRouterBlock(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
                  const ModelConfig& cfg, std::size_t experts, std::size_t k)
      : Core(store, init, prefix, cfg, experts, k),
        noise_std_(cfg.router_noise_std),
        coef_(cfg.router_aux_loss_coef) {
    require_finite_non_negative(noise_std_, "MoE seed router: router_noise_std");
  }

  void forward(const Tensor& x, const PassContext& ctx) {
    this->gate_.forward(this->logits_, x);
    if (ctx.training && noise_std_ > 0.0) {
      require(ctx.rng != nullptr, "MoE seed router: training needs a random stream");
      B::add_normal_noise(this->logits_, ctx.rng->next_key(), noise_std_);
    }
    B::row_softmax(probs_, this->logits_);
    B::topk_rows(this->indices_, this->logits_, this->K());
    B::gather_columns(selected_, this->logits_, this->indices_, this->K());
    B::row_softmax(this->weights_, selected_);
    this->count_load();

    aux_active_ = ctx.training && coef_ != 0.0;
    loss_scale_ = ctx.loss_scale;
    this->aux_ = 0.0;
    if (aux_active_) {
      B::column_means(mean_probs_, probs_);
      const std::vector<double> p = B::to_host(mean_probs_);
      const double slots = static_cast<double>(this->indices_.size());
      double sum = 0.0;
      for (std::size_t e = 0; e < p.size(); ++e)
        sum += static_cast<double>(this->load_[e]) / slots * p[e];
      this->aux_ = coef_ * static_cast<double>(this->experts_) * sum;
    }
  }

  void backward(Tensor& dx, const Tensor& dweights) {
    B::row_softmax_backward(dselected_, this->weights_, dweights);
    B::scatter_columns(this->dlogits_, dselected_, this->indices_, this->E());
    if (aux_active_) {
      // d aux / d probs[n, e] = coef * E * f_e / N, the same for every token.
      const double n = static_cast<double>(probs_.rows());
      const double slots = static_cast<double>(this->indices_.size());
      std::vector<double> g(this->experts_);
      for (std::size_t e = 0; e < g.size(); ++e)
        g[e] = loss_scale_ * coef_ * static_cast<double>(this->experts_) *
               (static_cast<double>(this->load_[e]) / slots) / n;
      B::resize(dprobs_, probs_.rows(), this->E());
      B::set_zero(dprobs_);
      this->add_per_expert(dprobs_, g);
      B::row_softmax_backward(daux_, probs_, dprobs_);
      B::add_inplace(this->dlogits_, daux_);
    }
    this->gate_.backward(&dx, this->dlogits_, /*accumulate_dx=*/true);
  }

  // Top-K was taken over the (noisy) logits.
  const Tensor& selection_scores() const { return this->logits_; }
  const Tensor& probs() const { return probs_; }

 private:
  double noise_std_ = 0.0, coef_ = 0.0;
  bool aux_active_ = false;
  double loss_scale_ = 1.0;
  Tensor probs_, selected_, mean_probs_;
  Tensor dselected_, dprobs_, daux_;
};

// Router policy (a): the seed baseline.
struct SeedRouter {
  template <class B>
  using Block = SeedRouterBlock<B>;
  static constexpr const char* name = "seed";
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
                       const ModelConfig& cfg, std::size_t experts, std::size_t k) {
    return Block<B>(store, init, prefix, cfg, experts, k);
  }
};

}  // namespace ablate
