// AdamW, Muon, Newton-Schulz, gradient clipping and the optimizer split, in double.
#include <doctest/doctest.h>

#include <limits>

#include <Eigen/Eigenvalues>
#include <cmath>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ablate/backend/cpu/backend.hpp"
#include "ablate/train/adamw.hpp"
#include "ablate/train/clip.hpp"
#include "ablate/train/hybrid_optimizer.hpp"
#include "ablate/train/muon.hpp"
#include "ablate/train/newton_schulz.hpp"
#include "ablate/train/optimizer_groups.hpp"

namespace {

using B = ablate::CPUBackend<double>;
using Tensor = B::Tensor;
using ablate::ParamRole;

// 0.5 * ||W - T||^2, and sets W's grad to its gradient W - T.
double quadratic(ablate::Parameter<B>& w, const Tensor& target) {
  w.grad = w.value - target;
  return 0.5 * w.grad.squaredNorm();
}

Tensor random_matrix(Eigen::Index rows, Eigen::Index cols, std::uint64_t key) {
  Tensor t(rows, cols);
  B::fill_normal(t, key, 1.0);
  return t;
}

}  // namespace

TEST_CASE("train: AdamW matches torch's update over two steps") {
  ablate::ParameterStore<B> store;
  auto& w = store.add("w", {2, 3}, ParamRole::Matrix);
  w.value << 0.5, -1.0, 2.0, 0.1, 0.0, -0.3;
  Tensor g1(2, 3), g2(2, 3);
  g1 << 0.2, -0.4, 1.5, -0.05, 0.3, 0.0;
  g2 << -0.1, 0.25, 1.0, 0.02, -0.6, 0.7;

  // The same two steps written out per element, in torch's order of operations.
  const double lr = 0.01, wd = 0.1, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  Tensor p = w.value, m = Tensor::Zero(2, 3), v = Tensor::Zero(2, 3);
  for (int t = 1; t <= 2; ++t) {
    const Tensor& g = t == 1 ? g1 : g2;
    for (Eigen::Index i = 0; i < p.size(); ++i) {
      p(i) *= 1 - lr * wd;
      m(i) = m(i) + (1 - b1) * (g(i) - m(i));
      v(i) = v(i) * b2 + ((1 - b2) * g(i)) * g(i);
      const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
      p(i) -= (lr / bc1) * (m(i) / (std::sqrt(v(i)) / std::sqrt(bc2) + eps));
    }
  }

  ablate::AdamW<B> opt({&w}, {.beta1 = b1, .beta2 = b2, .eps = eps, .weight_decay = wd});
  w.grad = g1;
  opt.step(lr);
  w.grad = g2;
  opt.step(lr);

  CHECK(opt.steps() == 2);
  const Tensor expected_literal = (Tensor(2, 3) << 0.48634713027136756, -0.9862750524266043,
                                   1.9763084788617649, 0.11324615557335668,
                                   -0.0063289644738113975, -0.306841668085369)
                                      .finished();
  for (Eigen::Index i = 0; i < p.size(); ++i) {
    CHECK(std::abs(w.value(i) - p(i)) < 1e-12);
    CHECK(std::abs(w.value(i) - expected_literal(i)) < 1e-12);
    CHECK(std::abs(opt.states()[0].m(i) - m(i)) < 1e-15);
    CHECK(std::abs(opt.states()[0].v(i) - v(i)) < 1e-15);
  }
  REQUIRE(opt.find("w") != nullptr);
  CHECK(opt.find("nope") == nullptr);
}

TEST_CASE("train: AdamW update spans several chunks") {
  // 3 x 5000 elements cross the kernel's 4096-element chunks; compare with a plain formula.
  ablate::ParameterStore<B> store;
  auto& w = store.add("w", {3, 5000}, ParamRole::Matrix);
  w.value = random_matrix(3, 5000, 11);
  w.grad = random_matrix(3, 5000, 12);
  const Tensor p0 = w.value;
  ablate::AdamW<B> opt({&w}, {.weight_decay = 0.0});
  opt.step(0.1);
  // First step with zero state: p -= lr * g / (|g| + eps) (bias corrections cancel).
  const Tensor expected =
      p0.array() - 0.1 * w.grad.array() / (w.grad.array().abs() + 1e-8);
  CHECK((w.value - expected).cwiseAbs().maxCoeff() < 1e-12);
}

TEST_CASE("train: AdamW minimises a quadratic") {
  ablate::ParameterStore<B> store;
  auto& w = store.add("w", {4, 6}, ParamRole::Matrix);
  const Tensor target = random_matrix(4, 6, 1);
  const double start = quadratic(w, target);
  ablate::AdamW<B> opt({&w}, {.weight_decay = 0.0});
  opt.step(0.1);
  const double after_one = quadratic(w, target);
  CHECK(after_one < start);
  for (int i = 1; i < 50; ++i) {
    opt.step(0.1);
    quadratic(w, target);
  }
  CHECK(quadratic(w, target) < 0.1 * start);
}

// newton_schulz5 on the CPU equals the iteration with every product and combination a call of
// its own (matmul, scale_add), bit for bit: the fused matmul_add changes no rounding.
template <class Backend>
bool same_as_unfused_newton_schulz(const typename Backend::Tensor& g) {
  typename Backend::Tensor fused, x = g, a, b, bx;
  ablate::newton_schulz5<Backend>(fused, g, static_cast<std::size_t>(g.rows()),
                                  static_cast<std::size_t>(g.cols()));
  Backend::normalize_frobenius(x, 1e-7);
  for (int i = 0; i < 5; ++i) {
    Backend::gram(a, x);
    Backend::matmul(b, a, a);
    Backend::scale_add(b, 2.0315, a, -4.7750);
    Backend::matmul(bx, b, x);
    Backend::scale_add(x, 3.4445, bx, 1.0);
  }
  return fused == x;
}

TEST_CASE("train: Newton-Schulz orthogonalises") {
  const Tensor g = random_matrix(8, 16, 2);
  Tensor x;
  ablate::newton_schulz5<B>(x, g, 8, 16);
  REQUIRE(x.rows() == 8);
  REQUIRE(x.cols() == 16);
  const Eigen::MatrixXd gram = x * x.transpose();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> eig(gram);
  // Singular values are the square roots of the Gram eigenvalues.
  CHECK(std::sqrt(eig.eigenvalues().minCoeff()) > 0.6);
  CHECK(std::sqrt(eig.eigenvalues().maxCoeff()) < 1.25);

  // A tall matrix is orthogonalised through its transpose.
  const Tensor tall = g.transpose();
  Tensor y;
  ablate::newton_schulz5<B>(y, tall, 16, 8);
  REQUIRE(y.rows() == 16);
  REQUIRE(y.cols() == 8);
  CHECK((y - x.transpose()).cwiseAbs().maxCoeff() < 1e-15);

  CHECK(same_as_unfused_newton_schulz<B>(g));
  CHECK(same_as_unfused_newton_schulz<ablate::CPU>(g.cast<float>()));
}

// `count` matrices of rows x cols stacked along the rows, matrix i from random key base + i.
template <class Backend>
typename Backend::Tensor random_stack(Eigen::Index count, Eigen::Index rows, Eigen::Index cols,
                                      std::uint64_t base) {
  typename Backend::Tensor stack(count * rows, cols);
  for (Eigen::Index i = 0; i < count; ++i) {
    typename Backend::Tensor m(rows, cols);
    Backend::fill_normal(m, base + static_cast<std::uint64_t>(i), 1.0);
    Backend::write_rows(stack, i * rows, m);
  }
  return stack;
}

// Every matrix of a batched Newton-Schulz equals the matrix orthogonalised alone, bit for bit,
// wide and tall (whose stack goes through the batched transpose).
template <class Backend>
void check_batched_newton_schulz() {
  for (auto [rows, cols] : {std::pair<Eigen::Index, Eigen::Index>{8, 12}, {12, 8}}) {
    CAPTURE(rows);
    const auto g = random_stack<Backend>(3, rows, cols, 20);
    typename Backend::Tensor out;
    ablate::NewtonSchulzWork<Backend> work;
    ablate::newton_schulz5<Backend>(out, g, static_cast<std::size_t>(rows),
                                    static_cast<std::size_t>(cols), 5, work, 3);
    REQUIRE(out.rows() == 3 * rows);
    REQUIRE(out.cols() == cols);
    for (Eigen::Index i = 0; i < 3; ++i) {
      CAPTURE(i);
      typename Backend::Tensor alone;
      ablate::newton_schulz5<Backend>(alone, typename Backend::Tensor(g.middleRows(i * rows, rows)),
                                      static_cast<std::size_t>(rows), static_cast<std::size_t>(cols));
      CHECK(out.middleRows(i * rows, rows) == alone);
    }
  }
}

TEST_CASE("train: batched Newton-Schulz computes each matrix as it would alone") {
  check_batched_newton_schulz<B>();
  check_batched_newton_schulz<ablate::CPU>();
  // A g that is not a stack of the stated matrices, and kernels given a stack that does not
  // divide, say so.
  Tensor out;
  const Tensor g = random_matrix(10, 4, 1);
  ablate::NewtonSchulzWork<B> work;
  CHECK_THROWS_WITH_AS(ablate::newton_schulz5<B>(out, g, 4, 4, 5, work, 2),
                       doctest::Contains("not a stack of 2 [4, 4] matrices"), ablate::invalid_input);
  CHECK_THROWS_WITH_AS(B::gram(out, g, 3), doctest::Contains("not a stack of 3 matrices"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(B::matmul(out, g, random_matrix(6, 3, 2), 2),
                       doctest::Contains("(stacks of 2)"), ablate::invalid_input);
  CHECK_THROWS_AS(B::write_rows(out = Tensor::Zero(4, 4), 2, random_matrix(3, 4, 3)),
                  ablate::invalid_input);
  CHECK_THROWS_AS(B::axpy_rows(out = Tensor::Zero(4, 4), 1.0, g, 7), ablate::invalid_input);
}

TEST_CASE("train: Muon updates same-shape parameters together exactly as one by one") {
  // Interleaved shapes: three of one, two of another, one alone. One Muon for all, one whose
  // stacks hold at most two 8 x 12 matrices (200 elements), and one Muon per matrix.
  const std::vector<std::pair<std::size_t, std::size_t>> shapes = {
      {8, 12}, {12, 8}, {8, 12}, {12, 8}, {5, 7}, {8, 12}};
  ablate::ParameterStore<B> together, capped, apart;
  std::vector<ablate::Parameter<B>*> all, some, each;
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    const auto [rows, cols] = shapes[i];
    const Tensor start =
        random_matrix(static_cast<Eigen::Index>(rows), static_cast<Eigen::Index>(cols), 30 + i);
    for (auto [store, list] : {std::pair{&together, &all}, {&capped, &some}, {&apart, &each}}) {
      auto& w = store->add("w" + std::to_string(i), {rows, cols}, ParamRole::Matrix);
      w.value = start;
      list->push_back(&w);
    }
  }
  ablate::Muon<B> joint(all);
  ablate::Muon<B> bounded(some, {.max_stack_elements = 200});
  std::vector<std::unique_ptr<ablate::Muon<B>>> singles;
  for (auto* p : each) singles.push_back(std::make_unique<ablate::Muon<B>>(std::vector{p}));
  CHECK(joint.stack_count() == 3);
  CHECK(bounded.stack_count() == 4);  // the third 8 x 12 starts a stack of its own
  CHECK(ablate::Muon<B>(all, {.max_stack_elements = 1}).stack_count() == shapes.size());
  for (std::uint64_t step = 0; step < 2; ++step) {
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      all[i]->grad = random_matrix(all[i]->value.rows(), all[i]->value.cols(), 100 * step + i);
      some[i]->grad = each[i]->grad = all[i]->grad;
    }
    joint.step(0.02);
    bounded.step(0.02);
    for (auto& m : singles) m->step(0.02);
  }
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    CAPTURE(i);
    CHECK(all[i]->value == each[i]->value);
    CHECK(some[i]->value == each[i]->value);
    CHECK(joint.states()[i].momentum == singles[i]->states()[0].momentum);
    CHECK(bounded.states()[i].momentum == singles[i]->states()[0].momentum);
  }
  CHECK_THROWS_AS(ablate::Muon<B>(all, {.max_stack_elements = 0}), ablate::invalid_input);
}

TEST_CASE("train: Muon scales the update by sqrt(max(1, rows/cols))") {
  CHECK(ablate::Muon<B>::shape_scale(16, 4) == 2.0);
  CHECK(ablate::Muon<B>::shape_scale(4, 16) == 1.0);

  // Without momentum the update is exactly lr * scale * NS5(grad).
  for (auto [rows, cols] : {std::pair<std::size_t, std::size_t>{16, 4}, {4, 16}}) {
    ablate::ParameterStore<B> store;
    auto& w = store.add("w", {rows, cols}, ParamRole::Matrix);
    w.value = random_matrix(rows, cols, 3);
    w.grad = random_matrix(rows, cols, 4);
    const Tensor before = w.value;
    Tensor ns;
    ablate::newton_schulz5<B>(ns, w.grad, rows, cols);
    ablate::Muon<B> opt({&w}, {.momentum = 0.0, .nesterov = false});
    opt.step(0.01);
    const double scale = rows > cols ? 2.0 : 1.0;
    CHECK(((before - w.value) - 0.01 * scale * ns).cwiseAbs().maxCoeff() < 1e-15);
  }
}

TEST_CASE("train: Muon momentum and Nesterov blend") {
  ablate::ParameterStore<B> store;
  auto& w = store.add("w", {3, 5}, ParamRole::Matrix);
  w.grad = random_matrix(3, 5, 5);
  const Tensor g = w.grad;
  ablate::Muon<B> opt({&w});
  opt.step(0.01);
  // buf = 0.05 g after the first step; the gradient itself is left alone.
  CHECK((opt.states()[0].momentum - 0.05 * g).cwiseAbs().maxCoeff() < 1e-15);
  CHECK(w.grad == g);
  // Nesterov feeds 0.0975 g to NS5, which normalises it away.
  Tensor ns;
  ablate::newton_schulz5<B>(ns, g, 3, 5);
  CHECK((w.value + 0.01 * ns).cwiseAbs().maxCoeff() < 1e-7);
}

TEST_CASE("train: Muon's second step follows momentum and the Nesterov blend by hand") {
  // One step cannot tell the blend from the buffer (both are multiples of g, which NS5
  // normalises away); the second can.  lerp(a, b, w) = a + w (b - a).
  const Tensor g1 = random_matrix(4, 6, 11), g2 = random_matrix(4, 6, 12), w0 = random_matrix(4, 6, 13);
  for (bool nesterov : {true, false}) {
    CAPTURE(nesterov);
    ablate::ParameterStore<B> store;
    auto& w = store.add("w", {4, 6}, ParamRole::Matrix);
    w.value = w0;
    ablate::Muon<B> opt({&w}, {.momentum = 0.9, .nesterov = nesterov});
    w.grad = g1;
    opt.step(0.1);
    w.grad = g2;
    opt.step(0.1);

    const Tensor buf1 = 0.1 * g1, buf2 = buf1 + 0.1 * (g2 - buf1);
    const Tensor u1 = nesterov ? Tensor(g1 + 0.9 * (buf1 - g1)) : buf1;
    const Tensor u2 = nesterov ? Tensor(g2 + 0.9 * (buf2 - g2)) : buf2;
    Tensor ns1, ns2;
    ablate::newton_schulz5<B>(ns1, u1, 4, 6);
    ablate::newton_schulz5<B>(ns2, u2, 4, 6);
    CHECK((opt.states()[0].momentum - buf2).cwiseAbs().maxCoeff() < 1e-14);
    CHECK((w.value - (w0 - 0.1 * ns1 - 0.1 * ns2)).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("train: Muon minimises a quadratic") {
  ablate::ParameterStore<B> store;
  auto& w = store.add("w", {8, 16}, ParamRole::Matrix);
  const Tensor target = random_matrix(8, 16, 6);
  const double start = quadratic(w, target);
  ablate::Muon<B> opt({&w});
  opt.step(0.05);
  CHECK(quadratic(w, target) < start);
  for (int i = 1; i < 50; ++i) {
    opt.step(0.05);
    quadratic(w, target);
  }
  CHECK(quadratic(w, target) < 0.5 * start);
}

TEST_CASE("train: Muon rejects 1-D parameters") {
  ablate::ParameterStore<B> store;
  auto& n = store.add("norm.weight", {8}, ParamRole::Norm);
  CHECK_THROWS_AS(ablate::Muon<B>({&n}), ablate::invalid_input);
}

TEST_CASE("train: clip_grad_norm returns the norm and clips above the limit") {
  ablate::ParameterStore<B> store;
  auto& a = store.add("a", {2, 2}, ParamRole::Matrix);
  auto& b = store.add("b", {3}, ParamRole::Bias);
  a.grad << 1.0, 2.0, -2.0, 0.0;
  b.grad << 0.0, 4.0, 0.0;  // total norm sqrt(1 + 4 + 4 + 16) = 5
  const Tensor a0 = a.grad, b0 = b.grad;

  CHECK(ablate::clip_grad_norm(store, 10.0) == doctest::Approx(5.0).epsilon(1e-15));
  CHECK(a.grad == a0);  // below the limit: untouched
  CHECK(b.grad == b0);

  CHECK(ablate::clip_grad_norm(store, 1.0) == doctest::Approx(5.0).epsilon(1e-15));
  const double coef = 1.0 / (5.0 + 1e-6);
  CHECK((a.grad - coef * a0).cwiseAbs().maxCoeff() < 1e-15);
  CHECK((b.grad - coef * b0).cwiseAbs().maxCoeff() < 1e-15);
  CHECK(ablate::grad_norm(store) == doctest::Approx(1.0).epsilon(1e-6));

  // max_norm <= 0 only measures.
  const Tensor a1 = a.grad;
  ablate::clip_grad_norm(store, 0.0);
  CHECK(a.grad == a1);
}

TEST_CASE("train: optimizer groups follow the parameter role") {
  ablate::ParameterStore<B> store;
  auto& embed = store.add("embed_tokens.weight", {10, 4}, ParamRole::Embedding);
  auto& q = store.add("layers.0.self_attn.q_proj.weight", {4, 4}, ParamRole::Matrix);
  auto& qb = store.add("layers.0.self_attn.q_proj.bias", {4}, ParamRole::Bias);
  auto& norm = store.add("layers.0.input_layernorm.weight", {4}, ParamRole::Norm);
  auto& router = store.add("layers.0.mlp.gate.weight", {8, 4}, ParamRole::Matrix);
  auto& flat = store.add("odd.vector", {4}, ParamRole::Matrix);  // 1-D: not Muon's

  const auto groups = ablate::split_optimizer_groups(store);
  CHECK(groups.muon == std::vector<ablate::Parameter<B>*>{&q, &router});
  CHECK(groups.adamw == std::vector<ablate::Parameter<B>*>{&embed, &qb, &norm, &flat});
}

TEST_CASE("train: HybridOptimizer applies base lr times the factor") {
  auto build = [](ablate::ParameterStore<B>& store) {
    auto& w = store.add("w", {4, 6}, ParamRole::Matrix);
    auto& n = store.add("n", {6}, ParamRole::Norm);
    w.value = random_matrix(4, 6, 7);
    w.grad = random_matrix(4, 6, 8);
    n.value = random_matrix(1, 6, 9);
    n.grad = random_matrix(1, 6, 10);
  };
  ablate::ParameterStore<B> s1, s2;
  build(s1);
  build(s2);

  ablate::HybridOptimizer<B> hybrid(s1);
  CHECK(hybrid.muon().states().size() == 1);
  CHECK(hybrid.adamw().states().size() == 1);
  hybrid.step(0.5);

  ablate::Muon<B> muon({&s2.at("w")});
  ablate::AdamW<B> adamw({&s2.at("n")});
  muon.step(0.01 * 0.5);
  adamw.step(1e-3 * 0.5);
  CHECK(s1.at("w").value == s2.at("w").value);
  CHECK(s1.at("n").value == s2.at("n").value);
  CHECK(hybrid.adamw().find("n")->v == adamw.states()[0].v);

  ablate::HybridOptions inf_lr;
  inf_lr.muon_lr = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(ablate::HybridOptimizer<B>(s1, inf_lr),
                       doctest::Contains("HybridOptimizer: muon_lr must be a finite number >= 0, got inf"),
                       ablate::invalid_input);
  ablate::HybridOptions nan_lr;
  nan_lr.adamw_lr = std::nan("");
  CHECK_THROWS_WITH_AS(ablate::HybridOptimizer<B>(s1, nan_lr),
                       doctest::Contains("adamw_lr must be a finite number >= 0, got nan"),
                       ablate::invalid_input);
}

TEST_CASE("optimizers: impossible settings are refused") {
  using B = ablate::CPU;
  ablate::ParameterStore<B> s;
  s.add("w", {4, 4}, ParamRole::Matrix);
  const double inf = std::numeric_limits<double>::infinity();
  auto adamw_with = [&](auto change) {
    ablate::AdamWOptions o;
    change(o);
    return ablate::AdamW<B>({&s.at("w")}, o);
  };
  CHECK_THROWS_WITH_AS(adamw_with([&](auto& o) { o.eps = inf; }),
                       doctest::Contains("AdamW: eps must be a finite number > 0, got inf"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(adamw_with([&](auto& o) { o.eps = 0; }),
                       doctest::Contains("AdamW: eps must be a finite number > 0, got 0"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(adamw_with([&](auto& o) { o.weight_decay = inf; }),
                       doctest::Contains("AdamW: weight_decay must be a finite number >= 0, got inf"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(adamw_with([&](auto& o) { o.weight_decay = std::nan(""); }),
                       doctest::Contains("weight_decay must be a finite number >= 0, got nan"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(adamw_with([&](auto& o) { o.beta1 = std::nan(""); }),
                       doctest::Contains("AdamW: beta1 must be in [0, 1)"), ablate::invalid_input);
  CHECK_THROWS_WITH_AS(adamw_with([&](auto& o) { o.beta2 = 1.0; }),
                       doctest::Contains("AdamW: beta2 must be in [0, 1)"), ablate::invalid_input);
  ablate::MuonOptions m;
  m.momentum = 1.0;
  CHECK_THROWS_WITH_AS(ablate::Muon<B>({&s.at("w")}, m), doctest::Contains("Muon: momentum"),
                       ablate::invalid_input);
}
