// Experiment 5's plain softmax top-K gate: probs = softmax(gate(x)); top-K of probs; combine
// weights = the selected probs, renormalised over the K when norm_topk_prob.  In training only,
//   aux = router_aux_loss_coef * var_e(P_e),  P_e = mean over tokens of probs[:, e],
// with the unbiased variance (divisor E - 1) as torch.var computes it.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "ablate/blocks/moe/router.hpp"

namespace ablate {

template <class B>
class SoftmaxTopKRouterBlock : public detail::RouterCore<B> {
  using Core = detail::RouterCore<B>;

 public:
  using typename Core::Tensor;

  SoftmaxTopKRouterBlock() = default;
  SoftmaxTopKRouterBlock(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
                         const ModelConfig& cfg, std::size_t experts, std::size_t k)
      : Core(store, init, prefix, cfg, checked(cfg, experts), k),
        norm_topk_prob_(cfg.norm_topk_prob),
        coef_(cfg.router_aux_loss_coef) {}

  void forward(const Tensor& x, const PassContext& ctx) {
    this->gate_.forward(this->logits_, x);
    B::row_softmax(probs_, this->logits_);
    B::topk_rows(this->indices_, probs_, this->K());
    B::gather_columns(picked_, probs_, this->indices_, this->K());
    if (norm_topk_prob_)
      B::normalize_rows(this->weights_, picked_, 0.0, 1.0);
    else
      B::copy(this->weights_, picked_);
    this->count_load();

    aux_active_ = ctx.training && coef_ != 0.0;
    loss_scale_ = ctx.loss_scale;
    this->aux_ = 0.0;
    if (aux_active_) {
      B::column_means(mean_probs_, probs_);
      mean_ = B::to_host(mean_probs_);
      double avg = 0.0;
      for (double m : mean_) avg += m;
      avg /= static_cast<double>(mean_.size());
      double var = 0.0;
      for (double m : mean_) var += (m - avg) * (m - avg);
      var /= static_cast<double>(mean_.size() - 1);
      mean_avg_ = avg;
      this->aux_ = coef_ * var;
    }
  }

  void backward(Tensor& dx, const Tensor& dweights) {
    if (norm_topk_prob_)
      B::normalize_rows_backward(dpicked_, dweights, picked_, 0.0, 1.0);
    else
      B::copy(dpicked_, dweights);
    B::scatter_columns(dprobs_, dpicked_, this->indices_, this->E());
    if (aux_active_) {
      // d var / d P_e = 2 (P_e - mean P) / (E - 1); d P_e / d probs[n, e] = 1 / N.
      const double n = static_cast<double>(probs_.rows());
      const double e_minus_1 = static_cast<double>(this->experts_ - 1);
      std::vector<double> g(this->experts_);
      for (std::size_t e = 0; e < g.size(); ++e)
        g[e] = loss_scale_ * coef_ * 2.0 * (mean_[e] - mean_avg_) / e_minus_1 / n;
      this->add_per_expert(dprobs_, g);
    }
    B::row_softmax_backward(this->dlogits_, probs_, dprobs_);
    this->gate_.backward(&dx, this->dlogits_, /*accumulate_dx=*/true);
  }

  // Top-K was taken over the probabilities.
  const Tensor& selection_scores() const { return probs_; }
  const Tensor& probs() const { return probs_; }

 private:
  static std::size_t checked(const ModelConfig& cfg, std::size_t experts) {
    require(cfg.router_aux_loss_coef == 0.0 || experts >= 2,
            "MoE softmax router: the variance auxiliary loss needs at least 2 experts");
    return experts;
  }

  bool norm_topk_prob_ = true;
  double coef_ = 0.0;
  bool aux_active_ = false;
  double loss_scale_ = 1.0, mean_avg_ = 0.0;
  std::vector<double> mean_;
  Tensor probs_, picked_, mean_probs_;
  Tensor dpicked_, dprobs_;
};

// Router policy (c): Experiment 5's "DeepseekV3MoE" gate.
struct SoftmaxTopKRouter {
  template <class B>
  using Block = SoftmaxTopKRouterBlock<B>;
  static constexpr const char* name = "softmax";
  static std::vector<std::string_view> config_fields() { return {"norm_topk_prob"}; }
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
                       const ModelConfig& cfg, std::size_t experts, std::size_t k) {
    return Block<B>(store, init, prefix, cfg, experts, k);
  }
};

}  // namespace ablate
