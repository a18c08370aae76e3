// The small model configurations the unit tests start from, so that tests of one size agree on
// it and each test states only what it changes.
#pragma once

#include <ablate/core/config.hpp>

namespace ablate::test {

// For finite-difference checks of single blocks: d 8, 2 heads, sequences of up to 5 tokens,
// dropout on so its masks are part of every check.
inline ModelConfig gradcheck_config() {
  ModelConfig cfg;
  cfg.vocab_size = 11;
  cfg.hidden_size = 8;
  cfg.num_attention_heads = 2;
  cfg.num_hidden_layers = 2;
  cfg.intermediate_size = 12;
  cfg.max_position_embeddings = 5;
  cfg.hidden_dropout = 0.2;
  cfg.attention_dropout = 0.25;
  return cfg;
}

// For whole models (forward, training, save and load): d 16, 4 heads, 2 layers, sequences of up
// to 8 tokens, MLA with a query LoRA and both rope and non-rope head dims, dropout 0.1 (the
// default).
inline ModelConfig small_model_config() {
  ModelConfig cfg;
  cfg.vocab_size = 17;
  cfg.hidden_size = 16;
  cfg.num_attention_heads = 4;
  cfg.num_hidden_layers = 2;
  cfg.intermediate_size = 24;
  cfg.max_position_embeddings = 8;
  cfg.q_lora_rank = 8;
  cfg.kv_lora_rank = 8;
  cfg.qk_rope_head_dim = 4;
  cfg.qk_nope_head_dim = 2;
  cfg.v_head_dim = 4;
  return cfg;
}

// small_model_config with a GLM4 MoE's sizes: experts of width 8 in two groups, one group kept,
// aux-loss-free balancing on.
inline ModelConfig small_moe_model_config() {
  ModelConfig cfg = small_model_config();
  cfg.moe_intermediate_size = 8;
  cfg.n_group = 2;
  cfg.topk_group = 1;
  cfg.router_bias_update_rate = 0.01;
  return cfg;
}

}  // namespace ablate::test
