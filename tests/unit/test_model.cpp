// Whole-model properties: causality of every attention variant, parameter counts of the seed
// architectures, determinism, and errors on bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <new>
#include <sys/resource.h>
#include <unistd.h>
#include <limits>
#include <utility>

#include <ablate/ablate.hpp>
#include <ablate/model/parameter_layout.hpp>

#include <string>

#include "io_test_util.hpp"
#include "test_configs.hpp"

// clang spells "built with AddressSanitizer" its own way.
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ABLATE_TEST_CLANG_ASAN 1
#endif
#endif

namespace {

using namespace ablate;
using D = CPUBackend<double>;

Tokens ramp(std::size_t batch, std::size_t seq, std::size_t vocab, std::size_t mul = 5) {
  Tokens t(batch, seq);
  for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<int>((i * mul + 1) % vocab);
  return t;
}

// Changes token j of every sequence and reports whether any logit before j moved.  A causal
// model must leave positions < j bit-identical and change position j.
template <class Arch>
bool earlier_logits_change(std::size_t j) {
  const auto cfg = test::small_model_config();
  Model<Arch, D> model(cfg, 11);
  model.eval();
  const Tokens a = ramp(2, 8, cfg.vocab_size);
  Tokens b = a;
  for (std::size_t s = 0; s < 2; ++s) b(s, j) = static_cast<int>((a(s, j) + 3) % cfg.vocab_size);
  const D::Tensor la = model.forward(a);
  const D::Tensor lb = model.forward(b);
  bool earlier_changed = false, at_j_changed = false;
  for (std::size_t s = 0; s < 2; ++s) {
    for (std::size_t t = 0; t < j; ++t)
      earlier_changed |= la.row(static_cast<Eigen::Index>(s * 8 + t)) != lb.row(static_cast<Eigen::Index>(s * 8 + t));
    at_j_changed |= la.row(static_cast<Eigen::Index>(s * 8 + j)) != lb.row(static_cast<Eigen::Index>(s * 8 + j));
  }
  CHECK(at_j_changed);
  return earlier_changed;
}

}  // namespace

TEST_CASE_TEMPLATE("causal attention variants never read later tokens", Attn, MHA, MLA) {
  using Arch = Architecture<Attention<Attn>, FFN<GatedMLP>, Norm<RMS>>;
  for (std::size_t j : {1u, 4u, 7u}) {
    CAPTURE(j);
    CHECK_FALSE(earlier_logits_change<Arch>(j));
  }
}

TEST_CASE_TEMPLATE("the causality probe catches non-causal attention", Attn, NonCausalMHA, PlainMHA,
                   NonCausalMLA) {
  using Arch = Architecture<Attention<Attn>, FFN<MLP>, Norm<RMS>>;
  CHECK(earlier_logits_change<Arch>(4));
}

TEST_CASE("parameter count of the seed's mlp_512d at vocab 49152 is 37,752,320") {
  ModelConfig cfg;  // defaults are Experiment 1's sizes
  cfg.vocab_size = 49152;
  Model<Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>, CPU> model(cfg, 0);
  CHECK(model.parameter_count() == 37'752'320);
}

TEST_CASE("parameter count of the seed's attention_mlp_512d at vocab 49152 is 36,281,024") {
  ModelConfig cfg;
  cfg.vocab_size = 49152;
  cfg.attention_bias = true;  // DeepSeek attention with attention_bias = true
  Model<Architecture<Attention<MLA>, FFN<GatedMLP>, Norm<RMS>>, CPU> model(cfg, 0);
  CHECK(model.parameter_count() == 36'281'024);
}

TEST_CASE_TEMPLATE("a model's parameter layout lists what the model registers, in its order",
                   Arch, Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>,
                   Architecture<Attention<MLA>, FFN<Glm4MoE<4, 2>>, Norm<RMS>>,
                   Architecture<Attention<PlainMHA>, FFN<Exp5GatedMoE<4, 2>>, Norm<LN>, Placement<PostNorm>>,
                   Architecture<Attention<NonCausalMLA>, FFN<SeedMoE<4, 2>>, Norm<LN>>) {
  const auto cfg = test::small_moe_model_config();
  const Model<Arch, D> model(cfg, 0);
  const auto layout = parameter_layout<Arch>(cfg);
  REQUIRE(layout.size() == model.parameters().size());
  std::size_t i = 0, total = 0;
  for (const auto& p : model.parameters()) {
    CAPTURE(p.name);
    CHECK(layout[i].name == p.name);
    CHECK(layout[i].shape == p.shape);
    CHECK(layout[i].role == p.role);
    total += layout[i++].numel();
  }
  CHECK(total == model.parameter_count());
  // A config the model refuses, the layout refuses with the same message.
  auto bad = cfg;
  bad.num_attention_heads = 3;
  CHECK_THROWS_WITH_AS(parameter_layout<Arch>(bad), doctest::Contains("not divisible by num_attention_heads"),
                       invalid_input);
}

TEST_CASE("a parameter layout holds no elements: a model of 10^12 parameters lays out at once") {
  using Arch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  ModelConfig cfg;
  cfg.vocab_size = 1000;
  cfg.hidden_size = 65536;
  cfg.num_attention_heads = 64;
  cfg.num_hidden_layers = 16;
  cfg.intermediate_size = 4 * 65536;
  std::size_t total = 0;
  for (const auto& p : parameter_layout<Arch>(cfg)) total += p.numel();
  // embedding + per layer: two norms, qkv and o projections, gate, up and down; final norm.
  const std::size_t d = 65536, f = 4 * 65536;
  CHECK(total == 1000 * d + 16 * (2 * d + 4 * d * d + 3 * d * f) + d);
  CHECK(total > std::size_t{1} << 40);
}

TEST_CASE("HF-style parameter names") {
  const auto cfg = test::small_model_config();
  Model<Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>, D> model(cfg, 0);
  for (const char* name :
       {"embed_tokens.weight", "layers.0.input_layernorm.weight", "layers.0.self_attn.qkv_proj.weight",
        "layers.0.self_attn.o_proj.weight", "layers.1.post_attention_layernorm.weight",
        "layers.1.mlp.gate_proj.weight", "layers.1.mlp.up_proj.weight", "layers.1.mlp.down_proj.weight",
        "norm.weight"})
    CHECK_MESSAGE(model.parameters().find(name) != nullptr, name);
  CHECK(model.parameters().find("lm_head.weight") == nullptr);  // tied to the embedding
}

TEST_CASE("init schemes: the seed's keeps PyTorch's default for DeepSeek modules, normal does not") {
  ModelConfig cfg = test::small_model_config();
  cfg.hidden_size = 64;
  cfg.intermediate_size = 256;
  // Sample statistics of one weight: standard deviation and largest magnitude.
  auto stats = [](const auto& model, const char* name) {
    const auto& w = model.parameters().find(name)->value;
    const double n = static_cast<double>(w.size());
    return std::pair{std::sqrt(w.squaredNorm() / n - std::pow(w.sum() / n, 2)), w.cwiseAbs().maxCoeff()};
  };
  const double torch_bound = 1.0 / std::sqrt(64.0);  // uniform(+-1/sqrt(fan_in)), fan_in 64
  using Dense = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  using SkeletonInitMLP = Architecture<Attention<MHA>, FFN<GatedMLPInit<ModuleOrigin::Skeleton>>, Norm<RMS>>;
  const Model<Dense, D> seed(cfg, 3, InitScheme::Seed), normal(cfg, 3, InitScheme::Normal);
  const Model<SkeletonInitMLP, D> skeleton(cfg, 3, InitScheme::Seed);
  const auto [seed_std, seed_max] = stats(seed, "layers.0.mlp.gate_proj.weight");
  CHECK(seed_max <= torch_bound);
  CHECK(seed_std == doctest::Approx(torch_bound / std::sqrt(3.0)).epsilon(0.05));
  CHECK(stats(normal, "layers.0.mlp.gate_proj.weight").first == doctest::Approx(0.02).epsilon(0.05));
  CHECK(stats(skeleton, "layers.0.mlp.gate_proj.weight").first == doctest::Approx(0.02).epsilon(0.05));
  // The skeleton's own attention is normal(0, 0.02) under both schemes.
  CHECK(stats(seed, "layers.0.self_attn.qkv_proj.weight").first == doctest::Approx(0.02).epsilon(0.05));
  CHECK(stats(normal, "layers.0.self_attn.qkv_proj.weight").first == doctest::Approx(0.02).epsilon(0.05));
}

TEST_CASE("seeded runs are bit-for-bit deterministic, and different seeds differ") {
  const auto cfg = test::small_model_config();
  using Arch = Architecture<Attention<MHA>, FFN<MLP>, Norm<RMS>>;
  auto run = [&](std::uint64_t seed) {
    Model<Arch, CPU> model(cfg, seed);
    model.train(true);
    std::vector<double> losses;
    const Tokens in = ramp(2, 8, cfg.vocab_size), out = ramp(2, 8, cfg.vocab_size, 3);
    for (int step = 0; step < 3; ++step) {
      model.zero_grad();
      losses.push_back(model.forward_backward(in, out).loss);
      for (auto& p : model.parameters()) p.value -= 0.1f * p.grad;
    }
    return losses;
  };
  CHECK(run(5) == run(5));
  CHECK(run(5) != run(6));
}

TEST_CASE("dropout is active in training and off in eval") {
  const auto cfg = test::small_model_config();
  Model<Architecture<Attention<MHA>, FFN<MLP>, Norm<RMS>>, D> model(cfg, 1);
  const Tokens in = ramp(1, 8, cfg.vocab_size);
  model.eval();
  const D::Tensor e1 = model.forward(in);
  const D::Tensor e2 = model.forward(in);
  CHECK(e1 == e2);
  model.train(true);
  const D::Tensor t1 = model.forward(in);
  const D::Tensor t2 = model.forward(in);
  CHECK(t1 != t2);
  CHECK(t1 != e1);
}

namespace {

template <class F>
void check_invalid(F&& f, const std::string& fragment) {
  try {
    f();
    FAIL("expected std::invalid_argument mentioning '" << fragment << "'");
  } catch (const std::invalid_argument& e) {
    CHECK_MESSAGE(std::string(e.what()).find(fragment) != std::string::npos,
                  "message '" << std::string(e.what()) << "' lacks '" << fragment << "'");
  }
}

}  // namespace

TEST_CASE("bad input throws std::invalid_argument naming the problem") {
  using Arch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  const auto cfg = test::small_model_config();
  Model<Arch, D> model(cfg, 0);

  Tokens too_big = ramp(1, 4, cfg.vocab_size);
  too_big(0, 2) = static_cast<int>(cfg.vocab_size);
  check_invalid([&] { model.forward(too_big); }, "outside the vocabulary");
  Tokens negative = ramp(1, 4, cfg.vocab_size);
  negative(0, 1) = -1;
  check_invalid([&] { model.forward(negative); }, "outside the vocabulary");
  check_invalid([&] { model.forward(ramp(1, 9, cfg.vocab_size)); }, "max_position_embeddings");
  check_invalid([&] { model.forward(Tokens(0, 4)); }, "batch > 0");
  Tokens bad_target = ramp(1, 4, cfg.vocab_size);
  bad_target(0, 0) = 99;
  check_invalid([&] { model.forward_backward(ramp(1, 4, cfg.vocab_size), bad_target); }, "target id");
  check_invalid([&] { model.forward_backward(ramp(1, 4, cfg.vocab_size), ramp(1, 3, cfg.vocab_size)); },
                "does not match");

  auto with = [&](auto edit) {
    auto c = cfg;
    edit(c);
    return c;
  };
  check_invalid([&] { Model<Arch, D> m(with([](ModelConfig& c) { c.num_attention_heads = 3; }), 0); },
                "not divisible");
  check_invalid([&] { Model<Arch, D> m(with([](ModelConfig& c) { c.vocab_size = 0; }), 0); }, "vocab_size");
  check_invalid([&] { Model<Arch, D> m(with([](ModelConfig& c) { c.hidden_size = 0; }), 0); }, "hidden_size");
  check_invalid([&] { Model<Arch, D> m(with([](ModelConfig& c) { c.num_hidden_layers = 0; }), 0); },
                "num_hidden_layers");
  check_invalid([&] { Model<Arch, D> m(with([](ModelConfig& c) { c.intermediate_size = 0; }), 0); },
                "zero-sized");
  check_invalid([&] { Model<Arch, D> m(with([](ModelConfig& c) { c.hidden_dropout = 1.0; }), 0); },
                "hidden_dropout");

  // Non-finite or out-of-range numbers that would train on silently into NaN.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  check_invalid([&] { Model<Arch, D> m(with([&](ModelConfig& c) { c.rms_norm_eps = nan; }), 0); },
                "ModelConfig: rms_norm_eps must be a finite number > 0, got nan");
  check_invalid([&] { Model<Arch, D> m(with([&](ModelConfig& c) { c.layer_norm_eps = -1e-5; }), 0); },
                "ModelConfig: layer_norm_eps must be a finite number > 0, got -1e-05");
  check_invalid([&] { Model<Arch, D> m(with([&](ModelConfig& c) { c.rope_theta = inf; }), 0); },
                "rope_theta");
  check_invalid([&] { Model<Arch, D> m(with([&](ModelConfig& c) { c.initializer_range = nan; }), 0); },
                "initializer_range");
  check_invalid([&] { Model<Arch, D> m(with([&](ModelConfig& c) { c.initializer_range = -1; }), 0); },
                "initializer_range");
  using MlaArch = Architecture<Attention<MLA>, FFN<GatedMLP>, Norm<RMS>>;
  check_invalid([&] { Model<MlaArch, D> m(with([&](ModelConfig& c) { c.mla_rms_norm_eps = 0; }), 0); },
                "_layernorm: eps must be a finite number > 0");
  using SeedMoeArch = Architecture<Attention<MHA>, FFN<SeedMoE<4, 2>>, Norm<RMS>>;
  check_invalid([&] { Model<SeedMoeArch, D> m(with([&](ModelConfig& c) { c.router_aux_loss_coef = nan; }), 0); },
                "router_aux_loss_coef must be a finite number >= 0");
  check_invalid([&] { Model<SeedMoeArch, D> m(with([&](ModelConfig& c) { c.router_aux_loss_coef = -0.01; }), 0); },
                "router_aux_loss_coef");
  check_invalid([&] { Model<SeedMoeArch, D> m(with([&](ModelConfig& c) { c.router_noise_std = inf; }), 0); },
                "router_noise_std");
  using Glm4Arch = Architecture<Attention<MHA>, FFN<Glm4MoE<4, 2>>, Norm<RMS>>;
  check_invalid([&] { Model<Glm4Arch, D> m(with([&](ModelConfig& c) { c.routed_scaling_factor = nan; }), 0); },
                "routed_scaling_factor must be a finite number > 0");
  check_invalid([&] { Model<Glm4Arch, D> m(with([&](ModelConfig& c) { c.routed_scaling_factor = 0; }), 0); },
                "routed_scaling_factor");
  check_invalid([&] { Model<Glm4Arch, D> m(with([&](ModelConfig& c) { c.router_bias_update_rate = nan; }), 0); },
                "router_bias_update_rate");

  // Sizes whose products would wrap around 64 bits (and build tiny tensors that the kernels
  // then overrun) are refused, in the config and in the widths the blocks make of them.
  constexpr std::size_t huge = std::size_t{1} << 62;
  check_invalid([&] { Tokens t(huge, 4); }, "Tokens: batch x seq = ");
  check_invalid([&] { Tokens t(std::size_t{1} << 16, std::size_t{1} << 16); }, "exceeds the largest dimension");
  check_invalid([&] { Model<Arch, D> m(with([&](ModelConfig& c) { c.vocab_size = std::size_t{1} << 63; }), 0); },
                "ModelConfig: vocab_size = 9223372036854775808 exceeds the largest dimension");
  check_invalid([&] { Model<MlaArch, D> m(with([&](ModelConfig& c) { c.qk_nope_head_dim = huge - 48; }), 0); },
                "ModelConfig: qk_nope_head_dim");
  const auto wide_heads = [](ModelConfig& c) {
    c.hidden_size = std::size_t{1} << 20;
    c.num_attention_heads = std::size_t{1} << 20;
  };
  check_invalid([&] {
    Model<MlaArch, D> m(with([&](ModelConfig& c) { wide_heads(c); c.qk_nope_head_dim = 4096; }), 0);
  }, "MLA: heads x q/k head dim");
  check_invalid([&] {
    Model<Glm4Arch, D> m(with([&](ModelConfig& c) {
      c.n_shared_experts = std::size_t{1} << 20;
      c.moe_intermediate_size = 4096;
    }), 0);
  }, "MoE: n_shared_experts x moe_intermediate_size");
}

TEST_CASE("a forward that runs out of memory leaves the model usable, and says so to loss()") {
#if defined(__SANITIZE_ADDRESS__) || defined(ABLATE_TEST_CLANG_ASAN)
  MESSAGE("SKIPPED: AddressSanitizer reserves more address space than the limit this test sets");
#else
  using Arch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  auto cfg = test::small_model_config();
  cfg.max_position_embeddings = std::size_t{1} << 20;
  Model<Arch, CPU> model(cfg, 3);
  model.eval();
  const Tokens small = ramp(2, 8, cfg.vocab_size);
  const CPU::Tensor first = model.forward(small);
  // A window of 2^20 tokens needs 16 TB of attention probabilities: with the address space
  // limited to what the process has plus 3 GB, that allocation fails in any overcommit mode.
  std::size_t pages = 0;
  std::ifstream("/proc/self/statm") >> pages;
  REQUIRE(pages > 0);
  {
    const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
    io_test::ResourceLimit limit(RLIMIT_AS, pages * page + (std::size_t{3} << 30));
    CHECK_THROWS_AS(model.forward(Tokens(1, std::size_t{1} << 20)), std::bad_alloc);
  }
  CHECK_THROWS_WITH_AS(model.loss(small), doctest::Contains("loss() needs the activations of a forward() "
                                                            "that finished (the last one did not)"),
                       invalid_input);
  CHECK(model.forward(small) == first);  // and the model is destroyed cleanly after this
#endif
}

TEST_CASE("loss() and backward() before any forward() say what they need") {
  const auto cfg = test::small_model_config();
  Model<Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>, D> model(cfg, 0);
  CHECK_THROWS_WITH_AS(model.loss(ramp(1, 4, cfg.vocab_size)),
                       "loss() needs the activations of a forward() that finished", invalid_input);
  CHECK_THROWS_WITH_AS(model.backward(D::Tensor(4, cfg.vocab_size)),
                       "backward() needs the activations of a forward() that finished", invalid_input);
}

TEST_CASE("the parameter store refuses shapes no tensor can have") {
  ParameterStore<ShapeOnlyBackend> store;
  CHECK_THROWS_WITH_AS(store.add("a", {}, ParamRole::Norm), "parameter a: rank must be 1 or 2", invalid_input);
  CHECK_THROWS_WITH_AS(store.add("a", {2, 0}, ParamRole::Matrix), "parameter a: zero-sized dimension",
                       invalid_input);
  CHECK_THROWS_WITH_AS(store.add("a", {std::size_t{1} << 63, 2}, ParamRole::Matrix),
                       doctest::Contains("parameter a: dimension 9223372036854775808 exceeds the largest "
                                         "dimension ablate takes (2147483647)"),
                       invalid_input);
  store.add("a", {4, 2}, ParamRole::Matrix);
  CHECK_THROWS_WITH_AS(store.add("a", {1}, ParamRole::Bias), "parameter a registered twice", invalid_input);
  // Nearly 2^62 elements each: the fifth would make the count wrap around.
  const std::size_t big = kMaxDimension;
  for (const char* name : {"b", "c", "d", "e"}) store.add(name, {big, big}, ParamRole::Matrix);
  CHECK_THROWS_WITH_AS(store.add("f", {big, big}, ParamRole::Matrix),
                       "parameter f: the model's parameter count would exceed 2^64", invalid_input);
  CHECK(store.numel() == 8 + 4 * big * big);
  // A fused projection wider than the largest dimension is refused where it is registered.
  ModelConfig cfg = test::small_model_config();
  cfg.hidden_size = kMaxDimension - 1;  // heads of 2
  cfg.num_attention_heads = (kMaxDimension - 1) / 2;
  using Arch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
  CHECK_THROWS_WITH_AS(parameter_layout<Arch>(cfg),
                       doctest::Contains("parameter layers.0.self_attn.qkv_proj.weight: dimension 6442450938"),
                       invalid_input);
}
