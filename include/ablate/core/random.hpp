// Counter-based random numbers: a value is a pure function of (key, index), so dropout masks
// can be regenerated in the backward pass instead of stored, results do not depend on thread
// scheduling, and a GPU kernel can produce the same stream.
#pragma once

#include <cmath>
#include <cstdint>

#include "ablate/core/host_device.hpp"

namespace ablate {

// splitmix64 finaliser: a strong 64-bit mixing function.
ABLATE_HOST_DEVICE constexpr std::uint64_t mix64(std::uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

ABLATE_HOST_DEVICE constexpr std::uint64_t hash_combine(std::uint64_t key, std::uint64_t index) {
  return mix64(key ^ mix64(index + 0x632BE59BD9B4E019ull));
}

// Uniform in [0, 1) with 53 random bits.
ABLATE_HOST_DEVICE inline double uniform01(std::uint64_t key, std::uint64_t index) {
  return static_cast<double>(hash_combine(key, index) >> 11) * 0x1.0p-53;
}

// Standard normal by Box-Muller on two independent uniforms.
ABLATE_HOST_DEVICE inline double standard_normal(std::uint64_t key, std::uint64_t index) {
  const double u1 = 1.0 - uniform01(key, 2 * index);  // (0, 1]
  const double u2 = uniform01(key, 2 * index + 1);
  using std::cos, std::log, std::sqrt;  // the CUDA math library's overloads in device code
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// Hands out a fresh key per use (one per dropout call, per initialised tensor, ...).
class RandomStream {
 public:
  explicit RandomStream(std::uint64_t seed = 0) : seed_(seed) {}
  std::uint64_t next_key() { return hash_combine(mix64(seed_), counter_++); }
  std::uint64_t seed() const { return seed_; }
  std::uint64_t counter() const { return counter_; }
  void set_counter(std::uint64_t c) { counter_ = c; }

 private:
  std::uint64_t seed_;
  std::uint64_t counter_ = 0;
};

}  // namespace ablate
