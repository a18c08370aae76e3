// ModelConfig: every size and constant of a model, with Hugging Face style field names so a
// config reads like the DeepseekV3 / Glm4Moe configs it mirrors.
#pragma once

#include <cmath>
#include <cstddef>
#include <limits>
#include <string_view>
#include <utility>
#include <vector>

#include "ablate/core/dimensions.hpp"
#include "ablate/core/error.hpp"

namespace ablate {

struct ModelConfig {
  // Skeleton.
  std::size_t vocab_size = 49152;
  std::size_t hidden_size = 512;
  std::size_t num_attention_heads = 8;
  std::size_t num_hidden_layers = 3;
  std::size_t intermediate_size = 2048;  // dense MLP / GatedMLP width
  std::size_t max_position_embeddings = 256;
  double hidden_dropout = 0.1;     // embedding, residual branches, final norm, MLP inner
  double attention_dropout = 0.1;  // on the attention probabilities
  double rms_norm_eps = std::numeric_limits<float>::epsilon();  // PyTorch RMSNorm default
  double layer_norm_eps = 1e-5;                                 // PyTorch LayerNorm default
  double rope_theta = 10000.0;
  bool attention_bias = false;  // biases on the attention projections
  double initializer_range = 0.02;

  // Multi-head latent attention (DeepSeek); used by Attention<MLA>.
  std::size_t q_lora_rank = 128;  // 0: a plain q_proj
  std::size_t kv_lora_rank = 128;
  std::size_t qk_rope_head_dim = 64;
  std::size_t qk_nope_head_dim = 0;
  std::size_t v_head_dim = 64;
  double mla_rms_norm_eps = 1e-6;  // the latent norms inside DeepSeek modules

  // Mixture of experts; used by FFN<MoE<...>>.  n_routed_experts / num_experts_per_tok come
  // from the MoE type itself; the rest are read here.
  std::size_t moe_intermediate_size = 1024;
  std::size_t n_shared_experts = 1;
  std::size_t n_group = 1;
  std::size_t topk_group = 1;
  bool norm_topk_prob = true;
  double routed_scaling_factor = 1.0;
  double router_aux_loss_coef = 0.01;
  double router_noise_std = 0.1;          // seed router: Gaussian noise on logits in training
  double router_bias_update_rate = 0.0;   // aux-loss-free balancing gamma; 0 = off

  std::size_t head_dim() const { return hidden_size / num_attention_heads; }

  // Checks the skeleton; blocks check the fields they use in their constructors.
  void validate() const {
    // Every size, used by this model's blocks or not: none may wrap around in a product.
    for (const auto& [name, size] : {std::pair{"ModelConfig: vocab_size", vocab_size},
                                     {"ModelConfig: hidden_size", hidden_size},
                                     {"ModelConfig: num_attention_heads", num_attention_heads},
                                     {"ModelConfig: num_hidden_layers", num_hidden_layers},
                                     {"ModelConfig: intermediate_size", intermediate_size},
                                     {"ModelConfig: max_position_embeddings", max_position_embeddings},
                                     {"ModelConfig: q_lora_rank", q_lora_rank},
                                     {"ModelConfig: kv_lora_rank", kv_lora_rank},
                                     {"ModelConfig: qk_rope_head_dim", qk_rope_head_dim},
                                     {"ModelConfig: qk_nope_head_dim", qk_nope_head_dim},
                                     {"ModelConfig: v_head_dim", v_head_dim},
                                     {"ModelConfig: moe_intermediate_size", moe_intermediate_size},
                                     {"ModelConfig: n_shared_experts", n_shared_experts},
                                     {"ModelConfig: n_group", n_group},
                                     {"ModelConfig: topk_group", topk_group}})
      require_dimension(size, name);
    require(vocab_size > 0, "ModelConfig: vocab_size must be > 0");
    require(hidden_size > 0, "ModelConfig: hidden_size must be > 0");
    require(num_attention_heads > 0, "ModelConfig: num_attention_heads must be > 0");
    require(num_hidden_layers > 0, "ModelConfig: num_hidden_layers must be > 0");
    require(max_position_embeddings > 0, "ModelConfig: max_position_embeddings must be > 0");
    require(hidden_size % num_attention_heads == 0, "ModelConfig: hidden_size (", hidden_size,
            ") is not divisible by num_attention_heads (", num_attention_heads, ")");
    require(hidden_dropout >= 0.0 && hidden_dropout < 1.0,
            "ModelConfig: hidden_dropout must be in [0, 1), got ", hidden_dropout);
    require(attention_dropout >= 0.0 && attention_dropout < 1.0,
            "ModelConfig: attention_dropout must be in [0, 1), got ", attention_dropout);
    require_finite_positive(rms_norm_eps, "ModelConfig: rms_norm_eps");
    require_finite_positive(layer_norm_eps, "ModelConfig: layer_norm_eps");
    require_finite_positive(rope_theta, "ModelConfig: rope_theta");
    require_finite_non_negative(initializer_range, "ModelConfig: initializer_range");
  }
};

// The ModelConfig fields a block policy declares as changing what it computes beyond the
// tensor shapes (P::config_fields()), or none.
template <class P>
std::vector<std::string_view> policy_config_fields() {
  if constexpr (requires { P::config_fields(); }) {
    return P::config_fields();
  } else {
    return {};
  }
}

}  // namespace ablate
