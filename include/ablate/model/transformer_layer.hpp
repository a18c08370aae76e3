// One transformer block: attention and feed-forward sub-blocks, each with its norm and a
// dropout on the branch, placed pre-norm or post-norm as the architecture says.
#pragma once

#include <string>
#include <type_traits>

#include "ablate/blocks/dropout.hpp"
#include "ablate/core/config.hpp"
#include "ablate/model/architecture.hpp"

namespace ablate {

template <class B, class Arch>
class TransformerLayer {
 public:
  using Tensor = typename B::Tensor;
  using AttentionBlock = typename Arch::attention::template Block<B>;
  using FFNBlock = typename Arch::ffn::template Block<B>;
  using NormBlock = typename Arch::norm::template Block<B>;
  static constexpr bool pre_norm = std::is_same_v<typename Arch::placement, PreNorm>;

  TransformerLayer(ParameterStore<B>& store, Initializer& init, const std::string& prefix,
                   const ModelConfig& cfg)
      : input_norm_(Arch::norm::make(store, init, prefix + ".input_layernorm", cfg)),
        attention_(Arch::attention::make(store, init, prefix + ".self_attn", cfg)),
        post_attention_norm_(Arch::norm::make(store, init, prefix + ".post_attention_layernorm", cfg)),
        ffn_(Arch::ffn::make(store, init, prefix + ".mlp", cfg)),
        attention_dropout_(cfg.hidden_dropout),
        ffn_dropout_(cfg.hidden_dropout) {}

  // x is updated in place.
  void forward(Tensor& x, const PassContext& ctx) {
    if constexpr (pre_norm) {
      input_norm_.forward(normed_, x);
      attention_.forward(branch_, normed_, ctx);
      attention_dropout_.forward(branch_, ctx);
      B::add_inplace(x, branch_);
      post_attention_norm_.forward(normed_, x);
      ffn_.forward(branch_, normed_, ctx);
      ffn_dropout_.forward(branch_, ctx);
      B::add_inplace(x, branch_);
    } else {
      attention_.forward(branch_, x, ctx);
      attention_dropout_.forward(branch_, ctx);
      B::add_inplace(branch_, x);
      input_norm_.forward(x, branch_);
      ffn_.forward(branch_, x, ctx);
      ffn_dropout_.forward(branch_, ctx);
      B::add_inplace(branch_, x);
      post_attention_norm_.forward(x, branch_);
    }
  }

  // dx holds d(loss)/d(output) on entry and d(loss)/d(input) on return.
  void backward(Tensor& dx) {
    if constexpr (pre_norm) {
      B::copy(dbranch_, dx);
      ffn_dropout_.backward(dbranch_);
      ffn_.backward(dnormed_, dbranch_);
      post_attention_norm_.backward(dtmp_, dnormed_);
      B::add_inplace(dx, dtmp_);
      B::copy(dbranch_, dx);
      attention_dropout_.backward(dbranch_);
      attention_.backward(dnormed_, dbranch_);
      input_norm_.backward(dtmp_, dnormed_);
      B::add_inplace(dx, dtmp_);
    } else {
      post_attention_norm_.backward(dtmp_, dx);  // d(sum after ffn)
      B::copy(dbranch_, dtmp_);
      ffn_dropout_.backward(dbranch_);
      ffn_.backward(dnormed_, dbranch_);
      B::add_inplace(dtmp_, dnormed_);           // d(output of first norm)
      input_norm_.backward(dx, dtmp_);           // d(sum after attention)
      B::copy(dbranch_, dx);
      attention_dropout_.backward(dbranch_);
      attention_.backward(dnormed_, dbranch_);
      B::add_inplace(dx, dnormed_);
    }
  }

  // Auxiliary loss of this layer's FFN (MoE load balancing), 0 for dense FFNs.
  double aux_loss() const {
    if constexpr (requires(const FFNBlock& f) { f.aux_loss(); }) {
      return ffn_.aux_loss();
    } else {
      return 0.0;
    }
  }
  void after_optimizer_step() {
    if constexpr (requires(FFNBlock& f) { f.after_optimizer_step(); }) ffn_.after_optimizer_step();
  }
  void discard_accumulation_group() {
    if constexpr (requires(FFNBlock& f) { f.discard_accumulation_group(); })
      ffn_.discard_accumulation_group();
  }

  AttentionBlock& attention() { return attention_; }
  const AttentionBlock& attention() const { return attention_; }
  FFNBlock& ffn() { return ffn_; }
  const FFNBlock& ffn() const { return ffn_; }

 private:
  NormBlock input_norm_;
  AttentionBlock attention_;
  NormBlock post_attention_norm_;
  FFNBlock ffn_;
  Dropout<B> attention_dropout_, ffn_dropout_;
  Tensor normed_, branch_, dbranch_, dnormed_, dtmp_;
};

}  // namespace ablate
