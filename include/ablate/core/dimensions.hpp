// The largest size ablate accepts for a tensor dimension: every size in a ModelConfig, the
// widths made of several (heads x head dim, ...) and the rows of a batch (batch x seq).  It is
// what a 32-bit index reaches (the GPU kernels index with them), and products of two such sizes
// stay far from overflowing 64 bits, so a size that would wrap around is refused instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "ablate/core/error.hpp"

namespace ablate {

inline constexpr std::size_t kMaxDimension = std::numeric_limits<std::int32_t>::max();

// Throws invalid_input unless `size` <= kMaxDimension; `what` names it ("ModelConfig:
// vocab_size").
inline void require_dimension(std::size_t size, const char* what) {
  require(size <= kMaxDimension, what, " = ", size, " exceeds the largest dimension ablate takes (",
          kMaxDimension, ")");
}

// a * b, when both and the product are at most kMaxDimension; else invalid_input naming `what`.
inline std::size_t dimension_product(std::size_t a, std::size_t b, const char* what) {
  require_dimension(a, what);
  require_dimension(b, what);
  require_dimension(a * b, what);  // both below 2^31: no wrap-around
  return a * b;
}

}  // namespace ablate
