// Multi-head latent attention (DeepSeek-V2/V3, HF DeepseekV3Attention).
//
//   q      = q_b_proj(RMSNorm(q_a_proj(x)))            or q_proj(x) when q_lora_rank == 0
//   ckv    = kv_a_proj_with_mqa(x) = [latent | k_rot]   (k_rot: one RoPE key shared by all heads)
//   kv     = kv_b_proj(RMSNorm(latent))               = per head [k_nope | v]
//   q_head = [q_nope | rope(q_rot)],  k_head = [k_nope | rope(k_rot)]
//   out    = o_proj(softmax(q k^T / sqrt(nope + rope)) v)
//
// RoPE uses DeepSeek's de-interleaved layout.  Causal unless the policy says otherwise (the
// non-causal form exists only to reproduce the seed protocol).
#pragma once

#include <cmath>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ablate/blocks/dropout.hpp"
#include "ablate/blocks/linear.hpp"
#include "ablate/blocks/multi_head_attention.hpp"
#include "ablate/blocks/rms_norm.hpp"
#include "ablate/core/rope_layout.hpp"
#include "ablate/core/attention_shape.hpp"
#include "ablate/core/config.hpp"
#include "ablate/core/dimensions.hpp"

namespace ablate {

template <class B, Masking M>
class MultiLatentAttentionBlock {
 public:
  using Tensor = typename B::Tensor;

  MultiLatentAttentionBlock() = default;
  MultiLatentAttentionBlock(ParameterStore<B>& store, Initializer& init, const std::string& name,
                            const ModelConfig& cfg)
      : heads_(static_cast<std::ptrdiff_t>(cfg.num_attention_heads)),
        nope_(static_cast<std::ptrdiff_t>(cfg.qk_nope_head_dim)),
        rope_(static_cast<std::ptrdiff_t>(cfg.qk_rope_head_dim)),
        vdim_(static_cast<std::ptrdiff_t>(cfg.v_head_dim)),
        latent_(static_cast<std::ptrdiff_t>(cfg.kv_lora_rank)),
        theta_(cfg.rope_theta),
        low_rank_q_(cfg.q_lora_rank > 0),
        attn_dropout_(cfg.attention_dropout) {
    validate(cfg);
    const std::size_t d = cfg.hidden_size, h = cfg.num_attention_heads;
    const std::size_t qk = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim;
    constexpr auto origin = ModuleOrigin::DeepSeek;
    if (low_rank_q_) {
      q_a_ = Linear<B>(store, init, name + ".q_a_proj", d, cfg.q_lora_rank, cfg.attention_bias, origin);
      q_a_norm_ = RMSNorm<B>(store, init, name + ".q_a_layernorm", cfg.q_lora_rank, cfg.mla_rms_norm_eps);
      q_b_ = Linear<B>(store, init, name + ".q_b_proj", cfg.q_lora_rank, h * qk, false, origin);
    } else {
      q_b_ = Linear<B>(store, init, name + ".q_proj", d, h * qk, false, origin);
    }
    kv_a_ = Linear<B>(store, init, name + ".kv_a_proj_with_mqa", d,
                      cfg.kv_lora_rank + cfg.qk_rope_head_dim, cfg.attention_bias, origin);
    kv_a_norm_ = RMSNorm<B>(store, init, name + ".kv_a_layernorm", cfg.kv_lora_rank, cfg.mla_rms_norm_eps);
    kv_b_ = Linear<B>(store, init, name + ".kv_b_proj", cfg.kv_lora_rank,
                      h * (cfg.qk_nope_head_dim + cfg.v_head_dim), false, origin);
    o_ = Linear<B>(store, init, name + ".o_proj", h * cfg.v_head_dim, d, cfg.attention_bias, origin);
  }

  static void validate(const ModelConfig& cfg) {
    for (const auto& [name, size] : {std::pair{"MLA: q_lora_rank", cfg.q_lora_rank},
                                     {"MLA: kv_lora_rank", cfg.kv_lora_rank},
                                     {"MLA: qk_nope_head_dim", cfg.qk_nope_head_dim},
                                     {"MLA: qk_rope_head_dim", cfg.qk_rope_head_dim},
                                     {"MLA: v_head_dim", cfg.v_head_dim}})
      require_dimension(size, name);
    // The widths of the projections (each sum of two sizes below 2^31 cannot wrap).
    const std::size_t h = cfg.num_attention_heads;
    dimension_product(h, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, "MLA: heads x q/k head dim");
    dimension_product(h, cfg.qk_nope_head_dim + cfg.v_head_dim, "MLA: heads x (nope + v head dim)");
    require_dimension(cfg.kv_lora_rank + cfg.qk_rope_head_dim, "MLA: kv_lora_rank + qk_rope_head_dim");
    require(cfg.kv_lora_rank > 0, "MLA: kv_lora_rank must be > 0 (the compressed KV path is required)");
    require(cfg.qk_rope_head_dim > 0 && cfg.qk_rope_head_dim % 2 == 0,
            "MLA: qk_rope_head_dim must be a positive even number, got ", cfg.qk_rope_head_dim);
    require(cfg.v_head_dim > 0, "MLA: v_head_dim must be > 0");
    B::check_attention_heads(static_cast<std::ptrdiff_t>(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim),
                             static_cast<std::ptrdiff_t>(cfg.v_head_dim),
                             static_cast<std::ptrdiff_t>(cfg.qk_rope_head_dim), "MLA");
  }

  void forward(Tensor& y, const Tensor& x, const PassContext& ctx) {
    const std::ptrdiff_t qk = nope_ + rope_;
    // Queries.
    if (low_rank_q_) {
      q_a_.forward(q_low_, x);
      q_a_norm_.forward(q_low_normed_, q_low_);
      q_b_.forward(q_, q_low_normed_);
    } else {
      q_b_.forward(q_, x);
    }
    B::rope_apply(q_, seq(ctx), heads_, qk, nope_, rope_, theta_, RopeLayout::DeepSeek, false);
    // Keys and values from the compressed latent.
    kv_a_.forward(ckv_, x);
    B::slice_columns(latent_in_, ckv_, 0, latent_);
    B::slice_columns(k_rot_, ckv_, latent_, rope_);
    B::rope_apply(k_rot_, seq(ctx), 1, rope_, 0, rope_, theta_, RopeLayout::DeepSeek, false);
    kv_a_norm_.forward(latent_normed_, latent_in_);
    kv_b_.forward(kv_, latent_normed_);
    B::resize(k_, kv_.rows(), heads_ * qk);
    B::resize(v_, kv_.rows(), heads_ * vdim_);
    for (std::ptrdiff_t h = 0; h < heads_; ++h) {
      if (nope_ > 0) {
        B::slice_columns(piece_, kv_, h * (nope_ + vdim_), nope_);
        B::write_columns(k_, h * qk, piece_);
      }
      B::write_columns(k_, h * qk + nope_, k_rot_);
      B::slice_columns(piece_, kv_, h * (nope_ + vdim_) + nope_, vdim_);
      B::write_columns(v_, h * vdim_, piece_);
    }
    shape_.batch = static_cast<std::ptrdiff_t>(ctx.batch);
    shape_.seq = seq(ctx);
    shape_.heads = heads_;
    shape_.qk_dim = qk;
    shape_.v_dim = vdim_;
    shape_.scale = 1.0 / std::sqrt(static_cast<double>(qk));
    shape_.causal = M == Masking::Causal;
    attn_dropout_.draw(ctx);
    B::attention_forward(att_, probs_, q_, k_, v_, shape_, attn_dropout_.active_p(), attn_dropout_.key());
    o_.forward(y, att_);
  }

  void backward(Tensor& dx, const Tensor& dy) {
    const std::ptrdiff_t qk = nope_ + rope_;
    o_.backward(&datt_, dy);
    B::attention_backward(dq_, dk_, dv_, datt_, probs_, q_, k_, v_, shape_,
                          attn_dropout_.active_p(), attn_dropout_.key());
    // Split dK / dV back onto kv_b's output and the shared rotary key.
    B::resize(dkv_, dk_.rows(), heads_ * (nope_ + vdim_));
    B::resize(dk_rot_, dk_.rows(), rope_);
    B::set_zero(dk_rot_);
    for (std::ptrdiff_t h = 0; h < heads_; ++h) {
      if (nope_ > 0) {
        B::slice_columns(piece_, dk_, h * qk, nope_);
        B::write_columns(dkv_, h * (nope_ + vdim_), piece_);
      }
      B::slice_columns(piece_, dk_, h * qk + nope_, rope_);
      B::add_inplace(dk_rot_, piece_);
      B::slice_columns(piece_, dv_, h * vdim_, vdim_);
      B::write_columns(dkv_, h * (nope_ + vdim_) + nope_, piece_);
    }
    B::rope_apply(dk_rot_, shape_.seq, 1, rope_, 0, rope_, theta_, RopeLayout::DeepSeek, true);
    kv_b_.backward(&dlatent_normed_, dkv_);
    kv_a_norm_.backward(dlatent_, dlatent_normed_);
    B::resize(dckv_, dk_.rows(), latent_ + rope_);
    B::write_columns(dckv_, 0, dlatent_);
    B::write_columns(dckv_, latent_, dk_rot_);
    kv_a_.backward(&dx, dckv_);
    // Query path.
    B::rope_apply(dq_, shape_.seq, heads_, qk, nope_, rope_, theta_, RopeLayout::DeepSeek, true);
    if (low_rank_q_) {
      q_b_.backward(&dq_low_normed_, dq_);
      q_a_norm_.backward(dq_low_, dq_low_normed_);
      q_a_.backward(&dx, dq_low_, /*accumulate_dx=*/true);
    } else {
      q_b_.backward(&dx, dq_, /*accumulate_dx=*/true);
    }
  }

 private:
  static std::ptrdiff_t seq(const PassContext& ctx) { return static_cast<std::ptrdiff_t>(ctx.seq); }

  std::ptrdiff_t heads_ = 0, nope_ = 0, rope_ = 0, vdim_ = 0, latent_ = 0;
  double theta_ = 10000.0;
  bool low_rank_q_ = true;
  Linear<B> q_a_, q_b_, kv_a_, kv_b_, o_;
  RMSNorm<B> q_a_norm_, kv_a_norm_;
  Dropout<B> attn_dropout_;
  AttentionShape shape_{};
  Tensor q_low_, q_low_normed_, q_, ckv_, latent_in_, latent_normed_, k_rot_, kv_, k_, v_, piece_;
  Tensor att_, probs_, datt_, dq_, dk_, dv_, dkv_, dk_rot_, dlatent_normed_, dlatent_, dckv_;
  Tensor dq_low_normed_, dq_low_;
};

// Policy tags for Attention<...>.
template <Masking M = Masking::Causal>
struct MultiLatent {
  template <class B>
  using Block = MultiLatentAttentionBlock<B, M>;
  static constexpr const char* name = M == Masking::Causal ? "mla" : "mla-noncausal";
  // The ModelConfig fields besides the tensor shapes that change what it computes.
  static std::vector<std::string_view> config_fields() {
    return {"num_attention_heads", "rope_theta", "mla_rms_norm_eps", "qk_nope_head_dim",
            "qk_rope_head_dim", "v_head_dim"};
  }
  template <class B>
  static Block<B> make(ParameterStore<B>& store, Initializer& init, const std::string& name,
                       const ModelConfig& cfg) {
    return Block<B>(store, init, name, cfg);
  }
};

using MLA = MultiLatent<>;                         // causal: the real DeepSeek attention
using NonCausalMLA = MultiLatent<Masking::None>;   // the seed's unmasked wrapper

}  // namespace ablate
