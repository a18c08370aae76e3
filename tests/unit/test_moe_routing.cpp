// MoE forward semantics: routing against plain scalar reimplementations of the three routers,
// the grouped dispatch against a dense reference (every expert on every token, masked by the
// routing), GLM4 group-limited selection on a hand-built case, auxiliary losses, the
// auxiliary-loss-free bias update, load counts, names, parameter names and config errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <numeric>
#include <string>
#include <type_traits>
#include <vector>

#include <ablate/ablate.hpp>

#include "gradcheck.hpp"

namespace {

using namespace ablate;
using test::D;
using test::Mat;

ModelConfig small_config() {
  ModelConfig cfg;
  cfg.hidden_size = 8;
  cfg.num_attention_heads = 2;
  cfg.hidden_dropout = 0.2;
  cfg.moe_intermediate_size = 5;
  cfg.n_shared_experts = 2;
  cfg.n_group = 3;
  cfg.topk_group = 2;
  cfg.routed_scaling_factor = 2.5;
  cfg.router_aux_loss_coef = 0.3;
  cfg.router_noise_std = 0.3;
  return cfg;
}

// The routing of N tokens written out the obvious way: chosen experts (best first) and weights.
struct Routing {
  std::vector<std::vector<int>> experts;
  std::vector<std::vector<double>> weights;
};

// Positions of the k largest entries of v, largest first (lower position on ties).
std::vector<int> top_positions(const std::vector<double>& v, std::size_t k) {
  std::vector<int> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return v[a] > v[b]; });
  order.resize(k);
  return order;
}

std::vector<double> softmax(const std::vector<double>& v) {
  const double m = *std::max_element(v.begin(), v.end());
  std::vector<double> out(v.size());
  double sum = 0;
  for (std::size_t i = 0; i < v.size(); ++i) sum += out[i] = std::exp(v[i] - m);
  for (double& o : out) o /= sum;
  return out;
}

std::vector<double> row(const Mat& m, Eigen::Index r) {
  return std::vector<double>(m.row(r).data(), m.row(r).data() + m.cols());
}

Routing seed_routing(const Mat& logits, std::size_t k) {
  Routing out;
  for (Eigen::Index n = 0; n < logits.rows(); ++n) {
    const auto z = row(logits, n);
    const auto top = top_positions(z, k);
    std::vector<double> picked;
    for (int e : top) picked.push_back(z[static_cast<std::size_t>(e)]);
    out.experts.push_back(top);
    out.weights.push_back(softmax(picked));
  }
  return out;
}

Routing glm4_routing(const Mat& logits, const std::vector<double>& bias, std::size_t k,
                     const ModelConfig& cfg) {
  Routing out;
  const std::size_t experts = static_cast<std::size_t>(logits.cols());
  const std::size_t size = experts / cfg.n_group;
  for (Eigen::Index n = 0; n < logits.rows(); ++n) {
    std::vector<double> score(experts), choice(experts);
    for (std::size_t e = 0; e < experts; ++e) {
      score[e] = 1.0 / (1.0 + std::exp(-logits(n, static_cast<Eigen::Index>(e))));
      choice[e] = score[e] + bias[e];
    }
    std::vector<double> group(cfg.n_group);
    for (std::size_t g = 0; g < cfg.n_group; ++g) {
      std::vector<double> members(choice.begin() + static_cast<long>(g * size),
                                  choice.begin() + static_cast<long>((g + 1) * size));
      std::sort(members.begin(), members.end(), std::greater<>());
      group[g] = members[0] + (size > 1 ? members[1] : 0.0);
    }
    const auto kept = top_positions(group, cfg.topk_group);
    std::vector<double> masked(experts, 0.0);
    for (int g : kept)
      for (std::size_t j = 0; j < size; ++j) {
        const std::size_t e = static_cast<std::size_t>(g) * size + j;
        masked[e] = choice[e];
      }
    const auto top = top_positions(masked, k);
    std::vector<double> w;
    double sum = 0;
    for (int e : top) sum += score[static_cast<std::size_t>(e)];
    for (int e : top)
      w.push_back(score[static_cast<std::size_t>(e)] / (cfg.norm_topk_prob ? sum + 1e-20 : 1.0) *
                  cfg.routed_scaling_factor);
    out.experts.push_back(top);
    out.weights.push_back(w);
  }
  return out;
}

Routing softmax_routing(const Mat& logits, std::size_t k, bool norm) {
  Routing out;
  for (Eigen::Index n = 0; n < logits.rows(); ++n) {
    const auto p = softmax(row(logits, n));
    const auto top = top_positions(p, k);
    std::vector<double> w;
    double sum = 0;
    for (int e : top) sum += p[static_cast<std::size_t>(e)];
    for (int e : top) w.push_back(p[static_cast<std::size_t>(e)] / (norm ? sum : 1.0));
    out.experts.push_back(top);
    out.weights.push_back(w);
  }
  return out;
}

// The block's routing equals the reference, and its output equals the dense reference
// sum_k w[n,k] * expert_{e[n,k]}(x)[n] (+ shared experts), every expert run on every token.
template <class Block>
void check_against_reference(Block& moe, const Mat& x, const Mat& y, const Routing& ref) {
  constexpr std::size_t K = Block::top_k;
  const auto& idx = moe.routing_indices();
  const Mat& w = moe.routing_weights();
  for (Eigen::Index n = 0; n < x.rows(); ++n)
    for (std::size_t k = 0; k < K; ++k) {
      CHECK(idx[static_cast<std::size_t>(n) * K + k] == ref.experts[static_cast<std::size_t>(n)][k]);
      CHECK(w(n, static_cast<Eigen::Index>(k)) ==
            doctest::Approx(ref.weights[static_cast<std::size_t>(n)][k]).epsilon(1e-12));
    }

  RandomStream rng(0);
  PassContext eval{false, 1, static_cast<std::size_t>(x.rows()), &rng, 1.0};
  Mat dense = Mat::Zero(x.rows(), x.cols());
  for (std::size_t e = 0; e < moe.experts().size(); ++e) {
    Mat all;
    moe.experts()[e].forward(all, x, eval);
    for (Eigen::Index n = 0; n < x.rows(); ++n)
      for (std::size_t k = 0; k < K; ++k)
        if (ref.experts[static_cast<std::size_t>(n)][k] == static_cast<int>(e))
          dense.row(n) += ref.weights[static_cast<std::size_t>(n)][k] * all.row(n);
  }
  if (moe.has_shared_experts()) {
    Mat shared;
    moe.shared_experts().forward(shared, x, eval);
    dense += shared;
  }
  CHECK((y - dense).norm() < 1e-12 * (1.0 + dense.norm()));
}

template <class Policy>
auto make_block(ParameterStore<D>& store, const ModelConfig& cfg) {
  Initializer init(1, 0.02, InitScheme::Normal);
  auto moe = Policy::template make<D>(store, init, "layers.0.mlp", cfg);
  std::uint64_t key = 300;
  for (auto& p : store) D::fill_uniform(p.value, key++, 0.6);
  return moe;
}

Mat gate_logits(ParameterStore<D>& store, const Mat& x) {
  return x * store.at("layers.0.mlp.gate.weight").value.transpose();
}

template <class Block>
Mat run(Block& moe, const Mat& x, bool training, RandomStream& rng, double loss_scale = 1.0) {
  PassContext ctx{training, 1, static_cast<std::size_t>(x.rows()), &rng, loss_scale};
  Mat y;
  moe.forward(y, x, ctx);
  return y;
}

// Runs f, which must throw invalid_input with `fragment` in its message.
void check_throws(const std::function<void()>& f, const std::string& fragment) {
  bool thrown = false;
  try {
    f();
  } catch (const invalid_input& e) {
    thrown = true;
    INFO("message: " << std::string(e.what()));
    CHECK(std::string(e.what()).find(fragment) != std::string::npos);
  }
  CHECK_MESSAGE(thrown, "expected invalid_input mentioning '" << fragment << "'");
}

}  // namespace

TEST_CASE("MoE seed router, eval: routing and dispatch equal the references") {
  const auto cfg = small_config();
  ParameterStore<D> store;
  auto moe = make_block<SeedMoE<6, 2>>(store, cfg);
  const Mat x = test::random_matrix(12, 8, 21);
  RandomStream rng(5);
  const Mat y = run(moe, x, false, rng);
  check_against_reference(moe, x, y, seed_routing(gate_logits(store, x), 2));
  CHECK(moe.aux_loss() == 0.0);  // training only
  CHECK_FALSE(moe.has_shared_experts());  // n_shared_experts = 2 in the config, none here
}

TEST_CASE("MoE seed router, training: noise from one key, softmax over the K noisy logits, aux") {
  const auto cfg = small_config();
  ParameterStore<D> store;
  // GatedMLP experts have no dropout, so the dense reference needs no masks.
  auto moe = make_block<MoE<6, 2, SeedRouter, GatedMLP, NoSharedExperts>>(store, cfg);
  const Mat x = test::random_matrix(12, 8, 22);
  RandomStream rng(5);
  const Mat y = run(moe, x, true, rng);

  Mat noisy = gate_logits(store, x);
  const std::uint64_t key = RandomStream(5).next_key();  // the router draws first
  for (Eigen::Index i = 0; i < noisy.size(); ++i)
    noisy.data()[i] += cfg.router_noise_std * standard_normal(key, static_cast<std::uint64_t>(i));
  const Routing ref = seed_routing(noisy, 2);
  check_against_reference(moe, x, y, ref);

  // aux = coef * E * sum_e f_e * P_e
  std::vector<double> f(6, 0.0), p(6, 0.0);
  for (Eigen::Index n = 0; n < x.rows(); ++n) {
    for (int e : ref.experts[static_cast<std::size_t>(n)]) f[static_cast<std::size_t>(e)] += 1.0 / (2.0 * 12.0);
    const auto probs = softmax(row(noisy, n));
    for (std::size_t e = 0; e < 6; ++e) p[e] += probs[e] / 12.0;
  }
  double expected = 0;
  for (std::size_t e = 0; e < 6; ++e) expected += f[e] * p[e];
  expected *= cfg.router_aux_loss_coef * 6.0;
  CHECK(moe.aux_loss() == doctest::Approx(expected).epsilon(1e-12));
}

TEST_CASE("MoE GLM4 router: routing and dispatch equal the references") {
  for (bool norm : {true, false}) {
    CAPTURE(norm);
    auto cfg = small_config();
    cfg.norm_topk_prob = norm;
    ParameterStore<D> store;
    auto moe = make_block<Glm4MoE<6, 2>>(store, cfg);
    D::fill_uniform(moe.router().e_score_correction_bias(), 17, 0.2);
    const auto bias = D::to_host(moe.router().e_score_correction_bias());
    const Mat x = test::random_matrix(12, 8, 23);
    RandomStream rng(5);
    for (bool training : {false, true}) {  // no noise, no dropout, no aux: the same either way
      const Mat y = run(moe, x, training, rng);
      check_against_reference(moe, x, y, glm4_routing(gate_logits(store, x), bias, 2, cfg));
      CHECK(moe.aux_loss() == 0.0);
    }
    CHECK(moe.has_shared_experts());
  }
}

TEST_CASE("MoE softmax router: routing, dispatch and the variance aux loss") {
  for (bool norm : {true, false}) {
    CAPTURE(norm);
    auto cfg = small_config();
    cfg.norm_topk_prob = norm;
    ParameterStore<D> store;
    auto moe = make_block<Exp5GatedMoE<6, 2>>(store, cfg);
    const Mat x = test::random_matrix(12, 8, 24);
    RandomStream rng(5);
    const Mat y = run(moe, x, true, rng);
    const Mat logits = gate_logits(store, x);
    check_against_reference(moe, x, y, softmax_routing(logits, 2, norm));

    std::vector<double> mean(6, 0.0);
    for (Eigen::Index n = 0; n < x.rows(); ++n) {
      const auto p = softmax(row(logits, n));
      for (std::size_t e = 0; e < 6; ++e) mean[e] += p[e] / 12.0;
    }
    const double avg = std::accumulate(mean.begin(), mean.end(), 0.0) / 6.0;
    double var = 0;
    for (double m : mean) var += (m - avg) * (m - avg) / 5.0;  // unbiased, as torch.var
    CHECK(moe.aux_loss() == doctest::Approx(cfg.router_aux_loss_coef * var).epsilon(1e-12));
    run(moe, x, false, rng);
    CHECK(moe.aux_loss() == 0.0);
  }
}

TEST_CASE("MoE MLP experts in training: dispatch equals the per-expert reference with dropout") {
  // Expert dropout draws one key per expert that received tokens, in expert order after the
  // router's noise key; with those keys every token's output is its weighted experts' sum.
  const auto cfg = small_config();
  ParameterStore<D> store;
  auto moe = make_block<SeedMoE<4, 2>>(store, cfg);
  const Mat x = test::random_matrix(10, 8, 25);
  RandomStream rng(8);
  const Mat y = run(moe, x, true, rng);
  const auto load = moe.expert_load();
  // Replay: skip the noise key, then give each expert with tokens the next key on its own rows.
  RandomStream replay(8);
  replay.next_key();
  Mat expected = Mat::Zero(x.rows(), x.cols());
  const auto& idx = moe.routing_indices();
  const Mat w = moe.routing_weights();
  for (std::size_t e = 0; e < 4; ++e) {
    if (load[e] == 0) continue;
    std::vector<Eigen::Index> tokens;
    for (Eigen::Index n = 0; n < x.rows(); ++n)
      for (std::size_t k = 0; k < 2; ++k)
        if (idx[static_cast<std::size_t>(n) * 2 + k] == static_cast<int>(e)) tokens.push_back(n);
    Mat batch(static_cast<Eigen::Index>(tokens.size()), x.cols());
    for (std::size_t i = 0; i < tokens.size(); ++i) batch.row(static_cast<Eigen::Index>(i)) = x.row(tokens[i]);
    PassContext ctx{true, 1, tokens.size(), &replay, 1.0};
    Mat out;
    moe.experts()[e].forward(out, batch, ctx);
    for (std::size_t i = 0; i < tokens.size(); ++i)
      for (std::size_t k = 0; k < 2; ++k)
        if (idx[static_cast<std::size_t>(tokens[i]) * 2 + k] == static_cast<int>(e))
          expected.row(tokens[i]) += w(tokens[i], static_cast<Eigen::Index>(k)) * out.row(static_cast<Eigen::Index>(i));
  }
  CHECK((y - expected).norm() < 1e-12);
  CHECK(replay.counter() == rng.counter());
}

TEST_CASE("MoE GLM4 group-limited routing picks experts from the best groups only") {
  // 8 experts in 4 groups of 2, 2 groups kept, top-2.  The gate is the identity, so x holds
  // the logits.  Plain top-2 by score would take experts 0 and 6 (the two largest scores),
  // but their groups score lower (sum of the group's two scores) than groups 1 and 2.
  ModelConfig cfg = small_config();
  cfg.n_group = 4;
  cfg.topk_group = 2;
  cfg.norm_topk_prob = true;
  cfg.routed_scaling_factor = 2.5;
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  auto moe = Glm4MoE<8, 2>::make<D>(store, init, "layers.0.mlp", cfg);
  store.at("layers.0.mlp.gate.weight").value = Mat::Identity(8, 8);
  Mat x(2, 8);
  //        group 0      group 1      group 2      group 3
  x.row(0) << 3.0, -3.0, 1.2, 1.0, 0.5, 0.5, 2.5, -4.0;
  x.row(1) = x.row(0);
  auto sigmoid = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
  // Group scores: 1.000, 1.500, 1.245, 0.942 -> groups 1 and 2 kept.
  RandomStream rng(1);
  run(moe, x, false, rng);
  const auto& idx = moe.routing_indices();
  CHECK(idx[0] == 2);
  CHECK(idx[1] == 3);
  const double s2 = sigmoid(1.2), s3 = sigmoid(1.0);
  CHECK(moe.routing_weights()(0, 0) == doctest::Approx(2.5 * s2 / (s2 + s3)).epsilon(1e-12));
  CHECK(moe.routing_weights()(0, 1) == doctest::Approx(2.5 * s3 / (s2 + s3)).epsilon(1e-12));
  const Mat& groups = moe.router().group_scores();
  CHECK(groups(0, 1) == doctest::Approx(s2 + s3).epsilon(1e-12));
  CHECK(groups(0, 3) == doctest::Approx(sigmoid(2.5) + sigmoid(-4.0)).epsilon(1e-12));

  // A bias of 0.6 on expert 4 makes group 2 the best and expert 4 the first choice, but the
  // weights stay the unbiased sigmoid scores.
  moe.router().e_score_correction_bias()(0, 4) = 0.6;
  run(moe, x, false, rng);
  CHECK(idx[0] == 4);
  CHECK(idx[1] == 2);
  const double s4 = sigmoid(0.5);
  CHECK(moe.routing_weights()(1, 0) == doctest::Approx(2.5 * s4 / (s4 + s2)).epsilon(1e-12));
  CHECK(moe.routing_weights()(1, 1) == doctest::Approx(2.5 * s2 / (s4 + s2)).epsilon(1e-12));
  for (std::size_t s = 0; s < idx.size(); ++s) CHECK((idx[s] >= 2 && idx[s] <= 5));

  // A bias of -2 on every expert pushes every choice score below 0 and ranks the groups as
  // before.  Dropped groups are out (-inf), not scored 0: masking with 0 would pick experts 0
  // and 1 of dropped group 0 over every kept one.
  moe.router().e_score_correction_bias().setConstant(-2.0);
  run(moe, x, false, rng);
  CHECK(idx[0] == 2);
  CHECK(idx[1] == 3);
  CHECK(moe.routing_weights()(0, 0) == doctest::Approx(2.5 * s2 / (s2 + s3)).epsilon(1e-12));
  CHECK(std::isinf(moe.router().selection_scores()(0, 0)));
}

TEST_CASE("MoE GLM4 auxiliary-loss-free balancing moves the bias toward the underloaded experts") {
  ModelConfig cfg = small_config();
  cfg.hidden_size = 4;
  cfg.n_group = 1;
  cfg.topk_group = 1;
  cfg.n_shared_experts = 0;
  cfg.router_bias_update_rate = 0.01;
  ParameterStore<D> store;
  Initializer init(1, 0.02, InitScheme::Normal);
  auto moe = Glm4MoE<4, 1>::make<D>(store, init, "layers.0.mlp", cfg);
  CHECK_FALSE(moe.has_shared_experts());
  store.at("layers.0.mlp.gate.weight").value = Mat::Identity(4, 4);
  Mat x = Mat::Zero(4, 4);  // tokens 0-2 pick expert 0, token 3 picks expert 1
  x(0, 0) = x(1, 0) = x(2, 0) = 1.0;
  x(3, 1) = 1.0;
  RandomStream rng(1);
  const Mat& bias = moe.router().e_score_correction_bias();

  run(moe, x, false, rng);  // eval forwards do not count
  moe.after_optimizer_step();
  CHECK(bias.norm() == 0.0);

  run(moe, x, true, rng);
  run(moe, x, true, rng);  // loads accumulate over the forwards of one step: 6, 2, 0, 0
  CHECK(moe.router().pending_load() == std::vector<std::size_t>{6, 2, 0, 0});
  moe.after_optimizer_step();  // mean load 2
  CHECK(bias(0, 0) == doctest::Approx(-0.01));
  CHECK(bias(0, 1) == 0.0);
  CHECK(bias(0, 2) == doctest::Approx(0.01));
  CHECK(bias(0, 3) == doctest::Approx(0.01));
  moe.after_optimizer_step();  // nothing counted since: unchanged
  CHECK(bias(0, 0) == doctest::Approx(-0.01));
  run(moe, x, true, rng);  // counted, then dropped with its accumulation group: unchanged
  moe.discard_accumulation_group();
  CHECK(moe.router().pending_load() == std::vector<std::size_t>(4, 0));
  moe.after_optimizer_step();
  CHECK(bias(0, 0) == doctest::Approx(-0.01));

  // Repeated steps spread a skewed load: 16 tokens of varied preferences, all biased toward
  // expert 0, which starts with half of them.
  ParameterStore<D> store3;
  auto skewed_moe = Glm4MoE<4, 1>::make<D>(store3, init, "layers.0.mlp", cfg);
  store3.at("layers.0.mlp.gate.weight").value = Mat::Identity(4, 4);
  Mat skewed(16, 4);
  for (Eigen::Index n = 0; n < 16; ++n)
    for (Eigen::Index j = 0; j < 4; ++j)
      skewed(n, j) = std::cos(1.7 * static_cast<double>(n) + 2.1 * static_cast<double>(j)) + (j == 0 ? 0.8 : 0.0);
  std::vector<std::size_t> max_load;
  for (int step = 0; step < 30; ++step) {
    run(skewed_moe, skewed, true, rng);
    const auto& load = skewed_moe.expert_load();
    max_load.push_back(*std::max_element(load.begin(), load.end()));
    skewed_moe.after_optimizer_step();
  }
  CHECK(max_load.front() == 8);
  CHECK(*std::max_element(max_load.end() - 10, max_load.end()) <= 6);
  CHECK(skewed_moe.router().e_score_correction_bias()(0, 0) < 0.0);

  // Off by default: the bias never moves.
  ModelConfig off = cfg;
  off.router_bias_update_rate = 0.0;
  ParameterStore<D> store2;
  auto still = Glm4MoE<4, 1>::make<D>(store2, init, "layers.0.mlp", off);
  run(still, x, true, rng);
  still.after_optimizer_step();
  CHECK(still.router().e_score_correction_bias().norm() == 0.0);
}

TEST_CASE_TEMPLATE("MoE load counts sum to tokens * K", Policy, SeedMoE<6, 2>, Glm4MoE<6, 3>,
                   Exp5GatedMoE<6, 1>, MoE<6, 6, SoftmaxTopKRouter, MLP, SharedExperts>) {
  const auto cfg = small_config();
  ParameterStore<D> store;
  auto moe = make_block<Policy>(store, cfg);
  const Mat x = test::random_matrix(13, 8, 26);
  RandomStream rng(2);
  for (bool training : {true, false}) {
    run(moe, x, training, rng);
    const auto& load = moe.expert_load();
    REQUIRE(load.size() == 6);
    CHECK(std::accumulate(load.begin(), load.end(), std::size_t{0}) == 13 * Policy::num_experts_per_tok);
    std::vector<std::size_t> counted(6, 0);
    for (int e : moe.routing_indices()) ++counted[static_cast<std::size_t>(e)];
    CHECK(counted == load);
  }
}

TEST_CASE_TEMPLATE("MoE backward refuses a dy that is not the last forward's", Policy, SeedMoE<6, 2>,
                   Glm4MoE<6, 2>, Exp5GatedMoE<6, 2>) {
  const auto cfg = small_config();
  ParameterStore<D> store;
  auto moe = make_block<Policy>(store, cfg);
  Mat dx;
  // The routing indexes the forward's tokens: without a forward, or with fewer rows, the
  // scatters would read past dy.
  CHECK_THROWS_WITH_AS(moe.backward(dx, test::random_matrix(6, 8, 1)),
                       doctest::Contains("no forward to go back through"), invalid_input);
  RandomStream rng(3);
  run(moe, test::random_matrix(6, 8, 2), true, rng);
  CHECK_THROWS_WITH_AS(moe.backward(dx, test::random_matrix(2, 8, 1)),
                       doctest::Contains("dy is [2, 8], expected [6, 8]"), invalid_input);
  CHECK_NOTHROW(moe.backward(dx, test::random_matrix(6, 8, 1)));
}

TEST_CASE("MoE policy names and HF parameter names") {
  CHECK(std::string(SeedMoE<8, 2>::name) == "moe8x2-seed");
  CHECK(std::string(Glm4MoE<8, 2>::name) == "moe8x2-glm4");
  CHECK(std::string(MoE<8, 2>::name) == "moe8x2-glm4");
  CHECK(std::is_same_v<MoE<8, 2>, Glm4MoE<8, 2>>);
  CHECK(std::string(Exp5GatedMoE<8, 2>::name) == "moe8x2-softmax");
  CHECK(std::string(MoE<16, 4, SeedRouter, GatedMLP, SharedExperts>::name) ==
        "moe16x4-seed-gated-mlp-shared");
  CHECK(std::string(MoE<64, 6, Glm4Router, GatedMLP, NoSharedExperts>::name) ==
        "moe64x6-glm4-noshared");
  CHECK(Architecture<FFN<SeedMoE<8, 2>>>::name() == "mha+moe8x2-seed+rms+prenorm");

  auto cfg = small_config();
  cfg.n_group = 2;
  cfg.topk_group = 1;
  ParameterStore<D> glm;
  Initializer init(1, 0.02, InitScheme::Normal);
  auto g = Glm4MoE<4, 2>::make<D>(glm, init, "layers.0.mlp", cfg);
  CHECK(glm.find("layers.0.mlp.gate.weight") != nullptr);
  CHECK(glm.at("layers.0.mlp.gate.weight").shape == std::vector<std::size_t>{4, 8});
  CHECK(glm.at("layers.0.mlp.experts.3.gate_proj.weight").shape == std::vector<std::size_t>{5, 8});
  CHECK(glm.at("layers.0.mlp.experts.3.down_proj.weight").shape == std::vector<std::size_t>{8, 5});
  CHECK(glm.at("layers.0.mlp.shared_experts.down_proj.weight").shape ==
        std::vector<std::size_t>{8, 10});  // n_shared_experts = 2
  CHECK(glm.size() == 1 + 4 * 3 + 3);
  CHECK(g.expert_width() == 5);

  ParameterStore<D> seed;
  auto s = SeedMoE<4, 2>::make<D>(seed, init, "layers.0.mlp", cfg);
  CHECK(seed.at("layers.0.mlp.experts.0.up_proj.weight").shape == std::vector<std::size_t>{5, 8});
  CHECK(seed.find("layers.0.mlp.experts.0.gate_proj.weight") == nullptr);
  CHECK(seed.find("layers.0.mlp.shared_experts.up_proj.weight") == nullptr);
  CHECK(seed.size() == 1 + 4 * 2);
  CHECK_FALSE(s.has_shared_experts());
}

TEST_CASE("MoE bad configurations throw invalid_input before registering anything") {
  const auto cfg = small_config();
  Initializer init(1, 0.02, InitScheme::Normal);
  auto expect = [&](auto policy, const ModelConfig& c, const std::string& fragment) {
    ParameterStore<D> store;
    using Policy = decltype(policy);
    check_throws([&] { Policy::template make<D>(store, init, "layers.0.mlp", c); }, fragment);
    CHECK(store.size() == 0);
  };
  expect(MoE<2, 3>{}, cfg, "exceeds the number of experts");
  expect(SeedMoE<4, 0>{}, cfg, "top_k must be > 0");
  ModelConfig c = cfg;
  c.moe_intermediate_size = 0;
  expect(Exp5GatedMoE<4, 2>{}, c, "moe_intermediate_size");
  c = cfg;
  c.n_group = 3;
  expect(Glm4MoE<8, 2>{}, c, "must divide the number of experts");
  c = cfg;
  c.n_group = 0;
  expect(Glm4MoE<8, 2>{}, c, "must divide the number of experts");
  c = cfg;
  c.n_group = 4;
  c.topk_group = 5;
  expect(Glm4MoE<8, 2>{}, c, "topk_group");
  c.topk_group = 0;
  expect(Glm4MoE<8, 2>{}, c, "topk_group");
  c = cfg;
  c.n_group = 8;
  c.topk_group = 1;
  expect(Glm4MoE<8, 2>{}, c, "fewer than top_k");
  c = cfg;
  c.router_aux_loss_coef = 0.01;
  expect(MoE<1, 1, SoftmaxTopKRouter>{}, c, "at least 2 experts");

  // Group settings are the GLM4 router's alone: the seed router ignores them.
  c = cfg;
  c.n_group = 3;
  ParameterStore<D> store;
  CHECK_NOTHROW(SeedMoE<8, 2>::make<D>(store, init, "layers.0.mlp", c));
}
