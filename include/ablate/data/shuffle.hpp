// Seeded shuffling that gives the same order on every platform and standard library:
// splitmix64 numbers, unbiased bounded draws by rejection, Fisher-Yates from the back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"

namespace ablate::data {

class SplitMix64 {
 public:
  explicit SplitMix64(std::uint64_t seed) : state_(seed) {}

  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }

  // Uniform in [0, bound), bound > 0, without modulo bias.
  std::uint64_t below(std::uint64_t bound) {
    require(bound > 0, "SplitMix64::below: the bound must be positive");
    const std::uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
    while (true) {
      const std::uint64_t r = next();
      if (r >= threshold) return r % bound;
    }
  }

 private:
  std::uint64_t state_;
};

// Fisher-Yates shuffle of `items` driven by `rng`.
template <class T>
void shuffle_in_place(std::vector<T>& items, SplitMix64& rng) {
  for (std::size_t i = items.size(); i > 1; --i) {
    const auto j = static_cast<std::size_t>(rng.below(i));
    std::swap(items[i - 1], items[j]);
  }
}

// 0, 1, ..., n - 1 in the order a generator seeded with `seed` gives.
inline std::vector<std::size_t> shuffled_indices(std::size_t n, std::uint64_t seed) {
  std::vector<std::size_t> order(n);
  std::iota(order.begin(), order.end(), std::size_t{0});
  SplitMix64 rng(seed);
  shuffle_in_place(order, rng);
  return order;
}

}  // namespace ablate::data
