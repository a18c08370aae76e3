// Dropout site: draws a fresh key per training forward and reuses it in the backward, so the
// mask is never stored.  Identity in eval mode or when p = 0.
#pragma once

#include <cstdint>

#include "ablate/core/context.hpp"
#include "ablate/core/error.hpp"

namespace ablate {

template <class B>
class Dropout {
 public:
  using Tensor = typename B::Tensor;

  Dropout() = default;
  explicit Dropout(double p) : p_(p) {}

  void forward(Tensor& x, const PassContext& ctx) {
    draw(ctx);
    if (!active_) return;
    B::dropout_apply(x, p_, key_);
  }
  void backward(Tensor& dx) const {
    if (active_) B::dropout_apply(dx, p_, key_);
  }

  double p() const { return p_; }
  // The key and probability of the last forward, for kernels that fuse their own dropout.
  double active_p() const { return active_ ? p_ : 0.0; }
  std::uint64_t key() const { return key_; }
  void draw(const PassContext& ctx) {
    active_ = ctx.training && p_ > 0.0;
    if (!active_) return;
    require(ctx.rng != nullptr, "Dropout: training needs a random stream (PassContext::rng)");
    key_ = ctx.rng->next_key();
  }

 private:
  double p_ = 0.0;
  bool active_ = false;
  std::uint64_t key_ = 0;
};

}  // namespace ablate
