// MoE backward against central finite differences (double precision): the input and every
// parameter, for every router x expert combination, in training mode (router noise, expert
// dropout and the aux loss all active).  The checked scalar is sum(y .* r) + loss_scale * aux.
//
// Routing is piecewise constant, so a check is only meaningful where no perturbation flips a
// choice.  The inputs below are fixed (seeded) and every check first REQUIREs that each
// token's K-th and (K+1)-th selection scores (and, for the GLM4 router, its kept and dropped
// group scores) are at least 1e-3 apart, a hundred times what an eps = 1e-5 perturbation can
// move them; noise and dropout are fixed by re-seeding the random stream per evaluation.
#include <doctest/doctest.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include <ablate/ablate.hpp>

#include "gradcheck.hpp"
#include "test_configs.hpp"

namespace {

using namespace ablate;
using test::D;
using test::Mat;

constexpr double kTolerance = 1e-6;
constexpr double kMinMargin = 1e-3;
constexpr std::size_t kBatch = 2, kSeq = 5;

ModelConfig moe_config() {
  ModelConfig cfg = test::gradcheck_config();
  cfg.moe_intermediate_size = 5;
  cfg.n_shared_experts = 1;
  cfg.n_group = 3;  // 6 experts in three groups of two, two groups kept
  cfg.topk_group = 2;
  cfg.routed_scaling_factor = 2.5;
  cfg.router_aux_loss_coef = 0.3;  // large, so the aux gradient weighs in the check
  cfg.router_noise_std = 0.3;
  return cfg;
}

// Smallest gap over rows between the k-th and (k+1)-th largest entries.
double topk_margin(const Mat& scores, std::size_t k) {
  double margin = std::numeric_limits<double>::infinity();
  for (Eigen::Index r = 0; r < scores.rows(); ++r) {
    std::vector<double> v(scores.row(r).data(), scores.row(r).data() + scores.cols());
    std::sort(v.begin(), v.end(), std::greater<>());
    if (k < v.size()) margin = std::min(margin, v[k - 1] - v[k]);
  }
  return margin;
}

// The routing margin of the last forward of an MoE block.
template <class Block>
double routing_margin(const Block& moe, const ModelConfig& cfg) {
  double margin = topk_margin(moe.router().selection_scores(), Block::top_k);
  if constexpr (requires { moe.router().group_scores(); })
    margin = std::min(margin, topk_margin(moe.router().group_scores(), cfg.topk_group));
  return margin;
}

template <class Block>
double moe_loss(Block& moe, const Mat& x, const Mat& r, double loss_scale) {
  RandomStream rng(1234);  // the same noise and dropout masks in every evaluation
  PassContext ctx{true, kBatch, kSeq, &rng, loss_scale};
  Mat y;
  moe.forward(y, x, ctx);
  return test::dot(y, r) + loss_scale * moe.aux_loss();
}

// Checks d/dx and d/dparam of sum(y .* r_scale*r) + loss_scale * aux.
template <class Policy>
void check_moe(const ModelConfig& cfg, double r_scale) {
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  auto moe = Policy::template make<D>(store, init, "layers.0.mlp", cfg);
  std::uint64_t key = 77;
  for (auto& p : store) D::fill_uniform(p.value, key++, 0.5);
  if constexpr (requires { moe.router().e_score_correction_bias(); })
    D::fill_uniform(moe.router().e_score_correction_bias(), 99, 0.05);

  const Mat x = test::random_matrix(kBatch * kSeq, static_cast<Eigen::Index>(cfg.hidden_size), 5);
  const Mat r = r_scale * test::random_matrix(x.rows(), x.cols(), 9);
  const double loss_scale = 0.7;
  Mat input = x;
  auto loss = [&] { return moe_loss(moe, input, r, loss_scale); };

  store.zero_grad();
  loss();
  const double margin = routing_margin(moe, cfg);
  INFO("routing margin " << margin);
  REQUIRE(margin > kMinMargin);
  Mat dx;
  moe.backward(dx, r);
  test::check_gradients(input, dx, store, loss, kTolerance);
}

template <class Router>
constexpr bool has_aux = !std::is_same_v<Router, Glm4Router>;

}  // namespace

TEST_CASE_TEMPLATE("MoE router x experts: backward matches finite differences", Policy,
                   MoE<6, 2, SeedRouter, MLP, NoSharedExperts>,
                   MoE<6, 2, SeedRouter, GatedMLP, SharedExperts>,
                   MoE<6, 2, Glm4Router, MLP, SharedExperts>,
                   MoE<6, 2, Glm4Router, GatedMLP, SharedExperts>,
                   MoE<6, 2, SoftmaxTopKRouter, MLP, NoSharedExperts>,
                   MoE<6, 2, SoftmaxTopKRouter, GatedMLP, SharedExperts>) {
  for (bool norm : {true, false}) {
    auto cfg = moe_config();
    cfg.norm_topk_prob = norm;
    CAPTURE(norm);
    check_moe<Policy>(cfg, 1.0);
    // The aux loss alone, so its gradient is not hidden behind the output's.
    if constexpr (has_aux<typename Policy::router>) check_moe<Policy>(cfg, 0.0);
  }
}

TEST_CASE("MoE with K = 1 and K = E: backward matches finite differences") {
  auto cfg = moe_config();
  cfg.n_group = 1;
  cfg.topk_group = 1;
  check_moe<MoE<3, 1, Glm4Router, GatedMLP, NoSharedExperts>>(cfg, 1.0);
  check_moe<MoE<3, 3, SoftmaxTopKRouter, MLP, NoSharedExperts>>(cfg, 1.0);
  check_moe<MoE<3, 3, SeedRouter, MLP, NoSharedExperts>>(cfg, 1.0);
}

TEST_CASE_TEMPLATE("whole 2-layer MoE model: gradients of scale * (CE + aux) match finite differences",
                   Arch,
                   Architecture<Attention<MHA>, FFN<SeedMoE<4, 2>>, Norm<RMS>>,
                   Architecture<Attention<MHA>, FFN<Glm4MoE<4, 2>>, Norm<RMS>>,
                   Architecture<Attention<PlainMHA>, FFN<Exp5GatedMoE<4, 2>>, Norm<LN>,
                                Placement<PostNorm>, FinalNorm<RMS>>) {
  auto cfg = moe_config();
  cfg.n_group = 1;  // group-limited routing is covered block by block above
  cfg.topk_group = 1;
  // Without the renormalisation over K the GLM4 gate gradient is large enough to stand out of
  // the finite differences' rounding noise at this depth (the block checks cover both).
  cfg.norm_topk_prob = false;
  Model<Arch, D> model(cfg, 3);
  // Large router weights spread the routing scores apart (see the margin check below).
  std::uint64_t key = 61;
  for (auto& p : model.parameters()) {
    const bool router = p.name.find("mlp.gate.weight") != std::string::npos;
    D::fill_uniform(p.value, key++, router ? 2.0 : 0.6);
  }
  Tokens inputs(2, 5), targets(2, 5);
  for (std::size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = static_cast<int>((i * 7 + 3) % cfg.vocab_size);
    targets[i] = static_cast<int>((i * 5 + 1) % cfg.vocab_size);
  }
  const double scale = 0.5;  // like one of two accumulated micro-batches
  model.train(true);
  auto loss = [&] {
    model.rng().set_counter(0);  // same noise and dropout masks in every evaluation
    model.forward(inputs, scale);
    const auto s = model.loss(targets);
    return scale * (s.loss + s.aux_loss);
  };
  model.zero_grad();
  model.rng().set_counter(0);
  const auto stats = model.forward_backward(inputs, targets, scale);
  for (auto& layer : model.layers()) {
    const double margin = routing_margin(layer.ffn(), cfg);
    INFO("routing margin " << margin);
    REQUIRE(margin > kMinMargin);
  }
  if constexpr (!std::is_same_v<typename Arch::ffn::router, Glm4Router>) CHECK(stats.aux_loss > 0.0);
  CHECK(scale * (stats.loss + stats.aux_loss) == doctest::Approx(loss()).epsilon(1e-14));
  for (auto& p : model.parameters()) {
    const double error = test::fd_relative_error(p.value, p.grad, loss);
    INFO(p.name << " relative error " << error << " grad norm " << p.grad.norm());
    CHECK(error < kTolerance);
  }
}
