// LossStats: what one forward pass over a batch measured, before any gradient scaling.
#pragma once

#include <cstddef>

namespace ablate {

struct LossStats {
  double loss = 0.0;       // mean token cross-entropy (the aux term is reported separately)
  double accuracy = 0.0;   // fraction of tokens whose argmax is the target
  double aux_loss = 0.0;   // auxiliary loss added to the objective (MoE balancing), 0 if none
  std::size_t tokens = 0;  // tokens the means are taken over
};

}  // namespace ablate
