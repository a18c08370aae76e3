// Model weights by HF name: exact round trip, metadata, buffers, and clear errors for a wrong
// architecture, a missing, extra or misshapen tensor.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>
#include <ablate/io/io.hpp>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "test_configs.hpp"

namespace {

using namespace ablate;
namespace io = ablate::io;

using DenseArch = Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>;
using MlaArch = Architecture<Attention<MLA>, FFN<MLP>, Norm<RMS>>;
using MoeArch = Architecture<Attention<MHA>, FFN<Glm4MoE<4, 2>>, Norm<RMS>>;

template <class M>
bool same_parameters(const M& a, const M& b) {
  for (const auto& p : a.parameters()) {
    const auto* q = b.parameters().find(p.name);
    if (q == nullptr || q->value.size() != p.value.size() ||
        std::memcmp(p.value.data(), q->value.data(),
                    sizeof(float) * static_cast<std::size_t>(p.value.size())) != 0)
      return false;
  }
  return true;
}

// Copies `from` into a new file, leaving out `drop` and replacing or adding tensors with `change`.
void rewrite(const std::filesystem::path& from, const std::filesystem::path& to,
             const std::string& drop,
             const std::function<void(io::SafetensorsWriter&)>& change = {}) {
  const auto r = io::SafetensorsReader::open(from);
  io::SafetensorsWriter w;
  for (const auto& [k, v] : r.metadata()) w.set_metadata(k, v);
  if (change) change(w);
  for (const auto& info : r.tensors())
    if (info.name != drop && !w.contains(info.name))
      w.add_raw(info.name, info.dtype, info.shape, r.read_bytes(info));
  w.write(to);
}

}  // namespace

TEST_CASE_TEMPLATE("weights: save then load into a fresh model is exact", Arch, DenseArch, MlaArch,
                   MoeArch) {
  io_test::TempDir dir;
  const auto cfg = test::small_moe_model_config();
  Model<Arch, CPU> a(cfg, 1), b(cfg, 2);
  REQUIRE_FALSE(same_parameters(a, b));
  io::save_weights(a, dir / "w.safetensors", {{"run", "test"}});
  io::load_weights(b, dir / "w.safetensors");
  CHECK(same_parameters(a, b));

  const auto r = io::SafetensorsReader::open(dir / "w.safetensors");
  CHECK(*r.metadata_value("format") == "pt");
  CHECK(*r.metadata_value("ablate.kind") == "weights");
  CHECK(*r.metadata_value("ablate.architecture") == Arch::name());
  CHECK(*r.metadata_value("ablate.version") == std::string(ablate::version));
  CHECK(*r.metadata_value("run") == "test");
  CHECK(io::config_differences(io::read_model_config(dir / "w.safetensors"), cfg).empty());
  CHECK(io::read_architecture(dir / "w.safetensors") == Arch::name());
  CHECK(r.at("embed_tokens.weight").shape == std::vector<std::size_t>{17, 16});
  CHECK(r.at("embed_tokens.weight").dtype == io::Dtype::F32);
  CHECK(r.at("norm.weight").shape == std::vector<std::size_t>{16});
}

TEST_CASE("weights: GLM4 router biases travel under their HF buffer name") {
  io_test::TempDir dir;
  const auto cfg = test::small_moe_model_config();
  Model<MoeArch, CPU> a(cfg, 1), b(cfg, 2);
  auto& router = a.layers()[1].ffn().router();
  CHECK(router.gate().weight().name == "layers.1.mlp.gate.weight");
  router.e_score_correction_bias() << 0.5f, -0.25f, 0.125f, 1.0f;
  io::save_weights(a, dir / "w.safetensors");
  const auto r = io::SafetensorsReader::open(dir / "w.safetensors");
  CHECK(r.at("layers.1.mlp.gate.e_score_correction_bias").shape == std::vector<std::size_t>{4});
  CHECK(r.read<float>("layers.1.mlp.gate.e_score_correction_bias") ==
        std::vector<float>{0.5f, -0.25f, 0.125f, 1.0f});
  io::load_weights(b, dir / "w.safetensors");
  CHECK(b.layers()[1].ffn().router().e_score_correction_bias() == router.e_score_correction_bias());
  CHECK(b.layers()[0].ffn().router().e_score_correction_bias().isZero());
}

TEST_CASE("weights: lower-precision files round once and load back") {
  io_test::TempDir dir;
  const auto cfg = test::small_moe_model_config();
  Model<DenseArch, CPU> a(cfg, 1), b(cfg, 2);
  io::save_weights(a, dir / "bf16.safetensors", {}, io::Dtype::BF16);
  CHECK(io::SafetensorsReader::open(dir / "bf16.safetensors").at("norm.weight").dtype ==
        io::Dtype::BF16);
  io::load_weights(b, dir / "bf16.safetensors");
  const auto& pa = a.parameters().at("layers.0.mlp.up_proj.weight").value;
  const auto& pb = b.parameters().at("layers.0.mlp.up_proj.weight").value;
  for (Eigen::Index i = 0; i < pa.size(); ++i)
    CHECK(pb.data()[i] == static_cast<float>(io::from_bf16_bits(io::to_bf16_bits(pa.data()[i]))));
  CHECK_THROWS_WITH_AS(io::save_weights(a, dir / "x", {}, io::Dtype::I32),
                       doctest::Contains("dtype must be"), invalid_input);
  CHECK_THROWS_WITH_AS(io::save_weights(a, dir / "x", {{"ablate.kind", "x"}}),
                       doctest::Contains("reserved"), invalid_input);
}

TEST_CASE("weights: mismatched files are rejected before the model changes") {
  io_test::TempDir dir;
  const auto cfg = test::small_moe_model_config();
  Model<DenseArch, CPU> a(cfg, 1), b(cfg, 2), b_copy(cfg, 2);
  const auto good = dir / "w.safetensors";
  io::save_weights(a, good);

  SUBCASE("wrong architecture names both") {
    Model<MlaArch, CPU> mla(cfg, 3);
    CHECK_THROWS_WITH_AS(
        io::load_weights(mla, good),
        doctest::Contains(
            "weights of architecture 'mha+gated-mlp+rms+prenorm' cannot be loaded into "
            "a model of architecture 'mla+mlp+rms+prenorm'"),
        invalid_input);
  }
  SUBCASE("missing tensor") {
    rewrite(good, dir / "m.safetensors", "norm.weight");
    CHECK_THROWS_WITH_AS(io::load_weights(b, dir / "m.safetensors"),
                         doctest::Contains("missing tensor 'norm.weight'"), invalid_input);
  }
  SUBCASE("extra tensor") {
    rewrite(good, dir / "e.safetensors", "", [](io::SafetensorsWriter& w) {
      w.add("extra.weight", io::Dtype::F32, {1}, std::vector<float>{1});
    });
    CHECK_THROWS_WITH_AS(io::load_weights(b, dir / "e.safetensors"),
                         doctest::Contains("unexpected tensor 'extra.weight'"), invalid_input);
  }
  SUBCASE("wrong shape") {
    rewrite(good, dir / "s.safetensors", "", [](io::SafetensorsWriter& w) {
      w.add("layers.1.self_attn.o_proj.weight", io::Dtype::F32, {16, 8}, std::vector<float>(128));
    });
    CHECK_THROWS_WITH_AS(
        io::load_weights(b, dir / "s.safetensors"),
        doctest::Contains(
            "tensor 'layers.1.self_attn.o_proj.weight' has shape [16, 8] in the file, "
            "the model expects [16, 16]"),
        invalid_input);
  }
  SUBCASE("a model of other sizes") {
    auto wide = cfg;
    wide.hidden_size = 32;
    Model<DenseArch, CPU> w(wide, 1);
    CHECK_THROWS_WITH_AS(io::load_weights(w, good),
                         doctest::Contains("'embed_tokens.weight' has shape [17, 16]"),
                         invalid_input);
  }
  SUBCASE("the same shapes but another function: heads, rope_theta") {
    auto heads = cfg;
    heads.num_attention_heads = cfg.num_attention_heads * 2;
    Model<DenseArch, CPU> h(heads, 1);
    CHECK_THROWS_WITH_AS(io::load_weights(h, good),
                         doctest::Contains("w.safetensors: the weights were saved from a model of "
                                           "another ModelConfig (file vs model): num_attention_heads: "
                                           "4 vs 8; build the model from io::read_model_config(file)"),
                         invalid_input);
    auto theta = cfg;
    theta.rope_theta = 3;
    Model<DenseArch, CPU> t(theta, 1);
    CHECK_THROWS_WITH_AS(io::load_weights(t, good), doctest::Contains("rope_theta: 10000.0 vs 3.0"),
                         invalid_input);
    // The router's settings count for a model with that router.
    Model<MoeArch, CPU> moe(cfg, 1);
    io::save_weights(moe, dir / "moe.safetensors");
    auto scaled = cfg;
    scaled.routed_scaling_factor = 2.5;
    Model<MoeArch, CPU> other(scaled, 1);
    CHECK_THROWS_WITH_AS(io::load_weights(other, dir / "moe.safetensors"),
                         doctest::Contains("routed_scaling_factor: 1.0 vs 2.5"), invalid_input);
    CHECK(MoeArch::config_fields() ==
          std::vector<std::string_view>{"num_attention_heads", "rope_theta", "n_group", "topk_group",
                                        "norm_topk_prob", "routed_scaling_factor", "rms_norm_eps"});
  }
  SUBCASE("check_weights_fit: the same checks on a config, before any model is built") {
    const auto r = io::SafetensorsReader::open(good);
    io::check_weights_fit<DenseArch>(r, cfg);
    auto edited = cfg;
    edited.num_hidden_layers = 1000000;  // a shape-only model would take a while
    CHECK_THROWS_WITH_AS(io::check_weights_fit<DenseArch>(r, edited),
                         doctest::Contains("w.safetensors: a config of 1000000 layers (7000002 tensors) for a file of 16 tensors"),
                         invalid_input);
    edited.num_hidden_layers = 3;
    CHECK_THROWS_WITH_AS(io::check_weights_fit<DenseArch>(r, edited),
                         doctest::Contains("missing tensors 'layers.2."), invalid_input);
    edited = cfg;
    edited.hidden_size = 65536;  // 40 GB of model for a file of a few KB
    edited.num_attention_heads = 4;
    CHECK_THROWS_WITH_AS(io::check_weights_fit<DenseArch>(r, edited),
                         doctest::Contains("'embed_tokens.weight' has shape [17, 16] in the file, "
                                           "the model expects [17, 65536]"),
                         invalid_input);
    edited = cfg;
    edited.intermediate_size = 1 << 30;
    CHECK_THROWS_WITH_AS(io::check_weights_fit<DenseArch>(r, edited),
                         doctest::Contains("'layers.0.mlp.gate_proj.weight' has shape [24, 16]"),
                         invalid_input);
    edited = cfg;
    edited.num_attention_heads = 8;
    CHECK_THROWS_WITH_AS(io::check_weights_fit<DenseArch>(r, edited),
                         doctest::Contains("num_attention_heads: 4 vs 8"), invalid_input);
    CHECK_THROWS_WITH_AS(io::check_weights_fit<MlaArch>(r, cfg),
                         doctest::Contains("cannot be loaded into a model of architecture"),
                         invalid_input);
  }
  SUBCASE("training-only settings, and fields the architecture does not read, may differ") {
    auto eval = cfg;
    eval.layer_norm_eps = 0.5;  // an RMSNorm model
    eval.mla_rms_norm_eps = 0.5;
    eval.n_group = 1;
    eval.norm_topk_prob = false;
    eval.hidden_dropout = eval.attention_dropout = 0;
    eval.initializer_range = 1;
    eval.max_position_embeddings = cfg.max_position_embeddings * 2;
    Model<DenseArch, CPU> e(eval, 1);
    io::load_weights(e, good);
    CHECK(same_parameters(a, e));
  }
  SUBCASE("integer dtype") {
    rewrite(good, dir / "i.safetensors", "", [](io::SafetensorsWriter& w) {
      w.add("norm.weight", io::Dtype::I32, {16}, std::vector<std::int32_t>(16, 1));
    });
    CHECK_THROWS_WITH_AS(io::load_weights(b, dir / "i.safetensors"),
                         doctest::Contains("must be floating point"), invalid_input);
  }
  SUBCASE("a NaN, an infinity, or a double past float's range") {
    const std::string name = "layers.1.mlp.down_proj.weight";
    const auto& shape = b.parameters().at(name).shape;
    const std::size_t n = b.parameters().at(name).numel();
    auto with_value = [&](const char* file, io::Dtype dtype, std::size_t at, double value) {
      rewrite(good, dir / file, "", [&](io::SafetensorsWriter& w) {
        std::vector<double> values(n, 0.25);
        values[at] = value;
        w.add(name, dtype, shape, values);
      });
      return dir / file;
    };
    CHECK_THROWS_WITH_AS(
        io::load_weights(b, with_value("nan.safetensors", io::Dtype::F32, n - 1, NAN)),
        doctest::Contains(("nan.safetensors: tensor '" + name + "' element " + std::to_string(n - 1) +
                           " is NaN or infinite as float (a corrupt file, or a model saved after "
                           "it diverged)")
                              .c_str()),
        invalid_input);
    CHECK_THROWS_WITH_AS(
        io::load_weights(b, with_value("inf.safetensors", io::Dtype::BF16, 3, -INFINITY)),
        doctest::Contains("element 3 is NaN or infinite"), invalid_input);
    CHECK_THROWS_WITH_AS(
        io::load_weights(b, with_value("big.safetensors", io::Dtype::F64, 0, 1e300)),
        doctest::Contains("element 0 is NaN or infinite as float"), invalid_input);
    // A double model reads 1e300 as it is.
    Model<DenseArch, CPUBackend<double>> d(cfg, 1);
    io::load_weights(d, dir / "big.safetensors");
    CHECK(d.parameters().at(name).value.data()[0] == 1e300);
  }
  SUBCASE("a plain file without ablate metadata loads") {
    const auto r = io::SafetensorsReader::open(good);
    io::SafetensorsWriter w;
    for (const auto& info : r.tensors())
      w.add_raw(info.name, info.dtype, info.shape, r.read_bytes(info));
    w.write(dir / "plain.safetensors");
    io::load_weights(b, dir / "plain.safetensors");
    CHECK(same_parameters(a, b));
    return;
  }
  CHECK(same_parameters(b, b_copy));  // every failed load left the model alone
}
