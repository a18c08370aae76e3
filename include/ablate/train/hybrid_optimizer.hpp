// The seed's optimizer pair: Muon on the weight matrices, AdamW on the rest, both stepped
// together with their base learning rates times one schedule factor.
#pragma once

#include <cmath>

#include "ablate/core/error.hpp"
#include "ablate/core/parameter.hpp"
#include "ablate/train/adamw.hpp"
#include "ablate/train/muon.hpp"
#include "ablate/train/optimizer_groups.hpp"

namespace ablate {

struct HybridOptions {
  double muon_lr = 0.01;
  MuonOptions muon;  // momentum 0.95, Nesterov, 5 Newton-Schulz steps
  double adamw_lr = 1e-3;
  AdamWOptions adamw;  // betas (0.9, 0.999), eps 1e-8, weight decay 0.1
};

template <class B>
class HybridOptimizer {
 public:
  explicit HybridOptimizer(ParameterStore<B>& store, HybridOptions options = {})
      : HybridOptimizer(split_optimizer_groups(store), options) {}

  HybridOptimizer(const OptimizerGroups<B>& groups, HybridOptions options)
      : options_(options), muon_(groups.muon, options.muon), adamw_(groups.adamw, options.adamw) {
    require_finite_non_negative(options.muon_lr, "HybridOptimizer: muon_lr");
    require_finite_non_negative(options.adamw_lr, "HybridOptimizer: adamw_lr");
  }

  // Updates every parameter from its .grad; lr_factor comes from the schedule.
  void step(double lr_factor) {
    muon_.step(options_.muon_lr * lr_factor);
    adamw_.step(options_.adamw_lr * lr_factor);
  }

  const HybridOptions& options() const { return options_; }
  Muon<B>& muon() { return muon_; }
  const Muon<B>& muon() const { return muon_; }
  AdamW<B>& adamw() { return adamw_; }
  const AdamW<B>& adamw() const { return adamw_; }

 private:
  HybridOptions options_;
  Muon<B> muon_;
  AdamW<B> adamw_;
};

}  // namespace ablate
