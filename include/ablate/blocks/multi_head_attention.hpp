// Multi-head attention with a fused qkv projection: qkv = x Wqkv^T -> q, k, v per head ->
// RoPE on q and k -> scaled dot-product attention (causal unless told otherwise, dropout on
// the probabilities) -> o_proj.  The non-causal and position-free variants exist only because
// the seed protocol used them.
#pragma once

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "ablate/blocks/dropout.hpp"
#include "ablate/blocks/linear.hpp"
#include "ablate/core/rope_layout.hpp"
#include "ablate/core/attention_shape.hpp"
#include "ablate/core/config.hpp"

namespace ablate {

enum class Masking { Causal, None };
enum class Positions { RoPE, None };

template <class B, Masking M, Positions P>
class MultiHeadAttentionBlock {
 public:
  using Tensor = typename B::Tensor;

  MultiHeadAttentionBlock() = default;
  MultiHeadAttentionBlock(ParameterStore<B>& store, Initializer& init, const std::string& name,
                          const ModelConfig& cfg)
      : d_(checked(cfg).hidden_size),
        heads_(cfg.num_attention_heads),
        theta_(cfg.rope_theta),
        qkv_(store, init, name + ".qkv_proj", d_, 3 * d_, cfg.attention_bias),
        o_(store, init, name + ".o_proj", d_, d_, cfg.attention_bias),
        attn_dropout_(cfg.attention_dropout) {
  }

  void forward(Tensor& y, const Tensor& x, const PassContext& ctx) {
    qkv_.forward(qkv_out_, x);
    const auto d = static_cast<std::ptrdiff_t>(d_);
    B::slice_columns(q_, qkv_out_, 0, d);
    B::slice_columns(k_, qkv_out_, d, d);
    B::slice_columns(v_, qkv_out_, 2 * d, d);
    if constexpr (P == Positions::RoPE) {
      rotate(q_, static_cast<std::ptrdiff_t>(ctx.seq), false);
      rotate(k_, static_cast<std::ptrdiff_t>(ctx.seq), false);
    }
    shape_ = shape(ctx);
    attn_dropout_.draw(ctx);
    B::attention_forward(att_, probs_, q_, k_, v_, shape_, attn_dropout_.active_p(),
                         attn_dropout_.key());
    o_.forward(y, att_);
  }

  void backward(Tensor& dx, const Tensor& dy) {
    o_.backward(&datt_, dy);
    B::attention_backward(dq_, dk_, dv_, datt_, probs_, q_, k_, v_, shape_,
                          attn_dropout_.active_p(), attn_dropout_.key());
    if constexpr (P == Positions::RoPE) {
      rotate(dq_, shape_.seq, true);
      rotate(dk_, shape_.seq, true);
    }
    const auto d = static_cast<std::ptrdiff_t>(d_);
    B::resize(dqkv_, dq_.rows(), 3 * d);
    B::write_columns(dqkv_, 0, dq_);
    B::write_columns(dqkv_, d, dk_);
    B::write_columns(dqkv_, 2 * d, dv_);
    qkv_.backward(&dx, dqkv_);
  }

 private:
  // Before any parameter is allocated: a config the backend cannot run fails here.
  static const ModelConfig& checked(const ModelConfig& cfg) {
    const auto hd = static_cast<std::ptrdiff_t>(cfg.head_dim());
    require(P == Positions::None || hd % 2 == 0,
            "MultiHeadAttention: RoPE needs an even head dim, got ", hd);
    B::check_attention_heads(hd, hd, P == Positions::RoPE ? hd : 0, "MultiHeadAttention");
    return cfg;
  }

  AttentionShape shape(const PassContext& ctx) const {
    const auto hd = static_cast<std::ptrdiff_t>(d_ / heads_);
    AttentionShape a;
    a.batch = static_cast<std::ptrdiff_t>(ctx.batch);
    a.seq = static_cast<std::ptrdiff_t>(ctx.seq);
    a.heads = static_cast<std::ptrdiff_t>(heads_);
    a.qk_dim = a.v_dim = hd;
    a.scale = 1.0 / std::sqrt(static_cast<double>(hd));
    a.causal = M == Masking::Causal;
    return a;
  }
  void rotate(Tensor& t, std::ptrdiff_t seq, bool inverse) const {
    const auto hd = static_cast<std::ptrdiff_t>(d_ / heads_);
    B::rope_apply(t, seq, static_cast<std::ptrdiff_t>(heads_), hd, 0, hd, theta_,
                  RopeLayout::Interleaved, inverse);
  }

  std::size_t d_ = 0, heads_ = 0;
  double theta_ = 10000.0;
  Linear<B> qkv_, o_;
  Dropout<B> attn_dropout_;
  AttentionShape shape_{};
  Tensor qkv_out_, q_, k_, v_, att_, probs_;
  Tensor datt_, dq_, dk_, dv_, dqkv_;
};

// Policy tags for Attention<...>.
template <Masking M = Masking::Causal, Positions P = Positions::RoPE>
struct MultiHead {
  template <class B>
  using Block = MultiHeadAttentionBlock<B, M, P>;
  static constexpr const char* name =
      M == Masking::Causal ? (P == Positions::RoPE ? "mha" : "mha-nopos")
                           : (P == Positions::RoPE ? "mha-noncausal" : "mha-noncausal-nopos");
  // The ModelConfig fields besides the tensor shapes that change what it computes.
  static std::vector<std::string_view> config_fields() {
    if constexpr (P == Positions::RoPE) return {"num_attention_heads", "rope_theta"};
    else return {"num_attention_heads"};
  }
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg) {
    return Block<B>(store, init, name, cfg);
  }
};

using MHA = MultiHead<>;                                       // causal, RoPE: the standard
using NonCausalMHA = MultiHead<Masking::None>;                 // seed-protocol only
using PlainMHA = MultiHead<Masking::None, Positions::None>;    // Experiment 5's nn.MultiheadAttention

}  // namespace ablate
