// What a block needs to know about the pass it runs in.
#pragma once

#include <cstddef>

#include "ablate/core/random.hpp"

namespace ablate {

struct PassContext {
  bool training = false;
  std::size_t batch = 0;
  std::size_t seq = 0;
  RandomStream* rng = nullptr;  // source of dropout keys; used only in training
  double loss_scale = 1.0;      // weight of this pass's loss in the backward (for aux losses)

  std::size_t tokens() const { return batch * seq; }
};

}  // namespace ablate
