// The geometry of one attention call, shared by every backend's attention kernels.
#pragma once

#include <cstddef>

namespace ablate {

struct AttentionShape {
  std::ptrdiff_t batch = 0, seq = 0, heads = 0;
  std::ptrdiff_t qk_dim = 0;  // per-head query/key width
  std::ptrdiff_t v_dim = 0;   // per-head value width
  double scale = 1.0;         // softmax scale, usually 1/sqrt(qk_dim)
  bool causal = true;
};

}  // namespace ablate
