// Which optimizer owns which parameter: the seed gives Muon every 2-D weight except the
// embedding and the norms, and AdamW everything else (embedding, norms, biases).
#pragma once

#include <vector>

#include "ablate/core/parameter.hpp"

namespace ablate {

template <class B>
bool uses_muon(const Parameter<B>& p) {
  return p.role == ParamRole::Matrix && p.shape.size() == 2;
}

template <class B>
struct OptimizerGroups {
  std::vector<Parameter<B>*> muon;
  std::vector<Parameter<B>*> adamw;
};

// Splits the store in registration order.
template <class B>
OptimizerGroups<B> split_optimizer_groups(ParameterStore<B>& store) {
  OptimizerGroups<B> groups;
  for (Parameter<B>& p : store) (uses_muon(p) ? groups.muon : groups.adamw).push_back(&p);
  return groups;
}

}  // namespace ablate
