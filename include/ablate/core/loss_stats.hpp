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

// What a backend's cross-entropy kernel returns: sums over the rows it saw.
struct LossSums {
  double loss_sum = 0;  // sum over rows of -log p(target)
  std::size_t correct = 0;
  std::size_t count = 0;
};

}  // namespace ablate
