// Multi-head latent attention: gradients with and without the low-rank query path, with and
// without non-rotary (nope) head dims, and its configuration errors.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>

#include "gradcheck.hpp"

namespace {

using namespace ablate;
using test::D;

ModelConfig mla_config(std::size_t q_lora, std::size_t nope) {
  ModelConfig cfg;
  cfg.vocab_size = 13;
  cfg.hidden_size = 8;
  cfg.num_attention_heads = 2;
  cfg.num_hidden_layers = 2;
  cfg.intermediate_size = 12;
  cfg.max_position_embeddings = 6;
  cfg.q_lora_rank = q_lora;
  cfg.kv_lora_rank = 6;
  cfg.qk_rope_head_dim = 4;
  cfg.qk_nope_head_dim = nope;
  cfg.v_head_dim = 3;  // deliberately different from the q/k head dim
  cfg.attention_bias = true;
  cfg.hidden_dropout = 0.1;
  cfg.attention_dropout = 0.2;
  return cfg;
}

}  // namespace

TEST_CASE_TEMPLATE("MLA backward matches finite differences", Policy, MLA, NonCausalMLA) {
  for (std::size_t q_lora : {std::size_t{0}, std::size_t{5}})
    for (std::size_t nope : {std::size_t{0}, std::size_t{2}}) {
      CAPTURE(q_lora);
      CAPTURE(nope);
      const auto cfg = mla_config(q_lora, nope);
      ParameterStore<D> store;
      Initializer init(1, 0.02, InitScheme::Seed);
      auto attention = Policy::template make<D>(store, init, "self_attn", cfg);
      test::check_block(attention, store, 2, 5, cfg.hidden_size);
    }
}

TEST_CASE("MLA at DeepSeek-V3-like ratios (nope 2x rope, q low rank) backward matches finite differences") {
  auto cfg = mla_config(6, 8);
  cfg.qk_rope_head_dim = 4;
  cfg.v_head_dim = 8;
  cfg.kv_lora_rank = 4;
  cfg.attention_bias = false;
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Seed);
  auto attention = MLA::make<D>(store, init, "self_attn", cfg);
  test::check_block(attention, store, 1, 4, cfg.hidden_size, /*training=*/false);
}

TEST_CASE("MLA parameter names follow HF DeepseekV3Attention") {
  const auto cfg = mla_config(5, 2);
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Seed);
  auto attention = MLA::make<D>(store, init, "layers.0.self_attn", cfg);
  for (const char* name :
       {"q_a_proj.weight", "q_a_proj.bias", "q_a_layernorm.weight", "q_b_proj.weight",
        "kv_a_proj_with_mqa.weight", "kv_a_proj_with_mqa.bias", "kv_a_layernorm.weight",
        "kv_b_proj.weight", "o_proj.weight", "o_proj.bias"})
    CHECK_MESSAGE(store.find(std::string("layers.0.self_attn.") + name) != nullptr, name);
  CHECK(store.at("layers.0.self_attn.kv_b_proj.weight").shape ==
        std::vector<std::size_t>{2 * (2 + 3), 6});
  CHECK(store.at("layers.0.self_attn.q_b_proj.weight").shape == std::vector<std::size_t>{2 * (2 + 4), 5});
}

TEST_CASE("MLA rejects impossible configurations") {
  auto check_throws = [](ModelConfig cfg, const char* fragment) {
    ParameterStore<D> store;
    Initializer init(1, 0.02, InitScheme::Seed);
    try {
      auto attention = MLA::make<D>(store, init, "self_attn", cfg);
      FAIL("no exception for " << fragment);
    } catch (const std::invalid_argument& e) {
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
  };
  auto cfg = mla_config(5, 2);
  cfg.kv_lora_rank = 0;
  check_throws(cfg, "kv_lora_rank");
  cfg = mla_config(5, 2);
  cfg.qk_rope_head_dim = 3;
  check_throws(cfg, "qk_rope_head_dim");
  cfg = mla_config(5, 2);
  cfg.qk_rope_head_dim = 0;
  check_throws(cfg, "qk_rope_head_dim");
  cfg = mla_config(5, 2);
  cfg.v_head_dim = 0;
  check_throws(cfg, "v_head_dim");
}
