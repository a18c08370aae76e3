// Every block's hand-written backward against central finite differences (double precision):
// the gradient with respect to the input and to every parameter, in training mode so dropout
// masks are part of what is checked.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>

#include "gradcheck.hpp"
#include "test_configs.hpp"

namespace {

using namespace ablate;
using test::D;
using test::Mat;

}  // namespace

TEST_CASE("RMSNorm backward matches finite differences") {
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  RMSNorm<D> norm(store, init, "norm", 8, 1e-6);
  test::check_block(norm, store, 2, 3, 8);
}

TEST_CASE("LayerNorm backward matches finite differences") {
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  LayerNorm<D> norm(store, init, "norm", 8, 1e-5);
  test::check_block(norm, store, 2, 3, 8);
}

TEST_CASE("Linear with and without bias backward matches finite differences") {
  for (bool bias : {false, true}) {
    ParameterStore<D> store;
    Initializer init(1, 0.02, InitScheme::Normal);
    Linear<D> linear(store, init, "proj", 6, 5, bias);
    struct Wrapper {
      Linear<D>& l;
      void forward(Mat& y, const Mat& x) { l.forward(y, x); }
      void backward(Mat& dx, const Mat& dy) { l.backward(&dx, dy); }
    } w{linear};
    test::check_block(w, store, 2, 3, 6);
  }
}

TEST_CASE("MLP (silu, inner dropout) backward matches finite differences") {
  const auto cfg = test::gradcheck_config();
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  auto mlp = MLP::make<D>(store, init, "mlp", cfg);
  test::check_block(mlp, store, 2, 4, cfg.hidden_size);
}

TEST_CASE("GatedMLP (SwiGLU) backward matches finite differences") {
  const auto cfg = test::gradcheck_config();
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  auto mlp = GatedMLP::make<D>(store, init, "mlp", cfg);
  test::check_block(mlp, store, 2, 4, cfg.hidden_size);
}

TEST_CASE_TEMPLATE("multi-head attention variants: backward matches finite differences", Policy,
                   MHA, NonCausalMHA, PlainMHA) {
  for (bool bias : {false, true}) {
    auto cfg = test::gradcheck_config();
    cfg.attention_bias = bias;
    ParameterStore<D> store;
    Initializer init(1, 0.02, InitScheme::Normal);
    auto attention = Policy::template make<D>(store, init, "self_attn", cfg);
    test::check_block(attention, store, 2, 5, cfg.hidden_size);
  }
}

TEST_CASE("attention without dropout (eval) backward matches finite differences") {
  const auto cfg = test::gradcheck_config();
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  auto attention = MHA::make<D>(store, init, "self_attn", cfg);
  test::check_block(attention, store, 2, 5, cfg.hidden_size, /*training=*/false);
}

TEST_CASE("RoPE layouts: inverse undoes forward, DeepSeek equals a permuted interleaved") {
  Mat x = test::random_matrix(6, 12, 3);  // 2 heads of 6, rope on 4 dims at offset 2
  Mat inter = x, deep = x;
  D::rope_apply(inter, 3, 2, 6, 2, 4, 10000.0, RopeLayout::Interleaved, false);
  D::rope_apply(deep, 3, 2, 6, 2, 4, 10000.0, RopeLayout::DeepSeek, false);
  for (Eigen::Index r = 0; r < 6; ++r)
    for (Eigen::Index h = 0; h < 2; ++h) {
      const Eigen::Index base = h * 6 + 2;
      CHECK(deep(r, h * 6) == x(r, h * 6));  // untouched nope part
      for (Eigen::Index i = 0; i < 2; ++i) {
        CHECK(deep(r, base + i) == doctest::Approx(inter(r, base + 2 * i)).epsilon(1e-14));
        CHECK(deep(r, base + i + 2) == doctest::Approx(inter(r, base + 2 * i + 1)).epsilon(1e-14));
      }
    }
  // Position 0 is the identity; rotations preserve norms.
  CHECK((inter.row(0) - x.row(0)).norm() < 1e-15);
  CHECK(inter.row(4).norm() == doctest::Approx(x.row(4).norm()).epsilon(1e-14));
  for (auto layout : {RopeLayout::Interleaved, RopeLayout::DeepSeek}) {
    Mat y = x;
    D::rope_apply(y, 3, 2, 6, 2, 4, 10000.0, layout, false);
    D::rope_apply(y, 3, 2, 6, 2, 4, 10000.0, layout, true);
    CHECK((y - x).norm() < 1e-13);
  }
}

TEST_CASE_TEMPLATE("transformer layer, pre-norm and post-norm: backward matches finite differences",
                   Arch,
                   Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>,
                   Architecture<Attention<MHA>, FFN<MLP>, Norm<LN>, Placement<PostNorm>>,
                   Architecture<Attention<PlainMHA>, FFN<GatedMLP>, Norm<LN>, Placement<PostNorm>>) {
  const auto cfg = test::gradcheck_config();
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  TransformerLayer<D, Arch> layer(store, init, "layers.0", cfg);
  struct Wrapper {
    TransformerLayer<D, Arch>& layer;
    void forward(Mat& y, const Mat& x, const PassContext& ctx) {
      y = x;
      layer.forward(y, ctx);
    }
    void backward(Mat& dx, const Mat& dy) {
      dx = dy;
      layer.backward(dx);
    }
  } w{layer};
  test::check_block(w, store, 2, 4, cfg.hidden_size);
}

TEST_CASE_TEMPLATE("whole 2-layer model: cross-entropy gradients match finite differences", Arch,
                   Architecture<Attention<MHA>, FFN<GatedMLP>, Norm<RMS>>,
                   Architecture<Attention<MHA>, FFN<MLP>, Norm<LN>, Placement<PostNorm>, FinalNorm<RMS>>) {
  const auto cfg = test::gradcheck_config();
  Model<Arch, D> model(cfg, 3);
  std::uint64_t key = 40;
  for (auto& p : model.parameters()) D::fill_uniform(p.value, key++, 0.3);
  Tokens inputs(2, 5), targets(2, 5);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = static_cast<int>((i * 7 + 3) % cfg.vocab_size);
    targets[i] = static_cast<int>((i * 5 + 1) % cfg.vocab_size);
  }
  model.train(true);
  auto loss = [&] {
    model.rng().set_counter(0);  // same dropout masks in every evaluation
    model.forward(inputs);
    return model.loss(targets).loss;
  };
  model.zero_grad();
  model.rng().set_counter(0);
  const auto stats = model.forward_backward(inputs, targets);
  CHECK(stats.loss == doctest::Approx(loss()).epsilon(1e-14));
  for (auto& p : model.parameters()) {
    const double error = test::fd_relative_error(p.value, p.grad, loss);
    INFO(p.name << " relative error " << error);
    CHECK(error < test::kTolerance);
  }
}
