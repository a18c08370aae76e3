// CPU backend kernels called directly, as a user's own block would call them: the fused
// cross-entropy against its definition, NaN propagation, and the errors for ids and shapes
// that would otherwise index outside a row or a table.
#include <doctest/doctest.h>

#include <ablate/ablate.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <stdexcept>
#include <vector>

#include "../elementwise_shape_checks.hpp"

namespace {

using D = ablate::CPUBackend<double>;

}  // namespace

TEST_CASE("CPU cross-entropy: loss, hits and gradient by definition, and NaN logits give NaN") {
  D::Tensor logits(3, 5);
  D::fill_uniform(logits, 3, 2.0);
  logits(2, 1) = 9.0;  // row 2's maximum, at its target
  const std::vector<std::int32_t> targets = {0, 4, 1};
  D::Tensor dlogits;
  const double scale = 0.25;
  const ablate::LossSums sums = D::cross_entropy(logits, targets.data(), &dlogits, scale);

  double loss = 0;
  std::size_t hits = 0;
  for (Eigen::Index r = 0; r < logits.rows(); ++r) {
    const double lse = std::log(logits.row(r).array().exp().sum());
    const auto t = static_cast<Eigen::Index>(targets[static_cast<std::size_t>(r)]);
    loss += lse - logits(r, t);
    Eigen::Index arg = 0;
    logits.row(r).maxCoeff(&arg);
    hits += arg == t;
    for (Eigen::Index c = 0; c < logits.cols(); ++c) {
      const double expected = scale * (std::exp(logits(r, c) - lse) - (c == t ? 1.0 : 0.0));
      CHECK(dlogits(r, c) == doctest::Approx(expected).epsilon(1e-12));
    }
  }
  CHECK(sums.loss_sum == doctest::Approx(loss).epsilon(1e-12));
  CHECK(sums.correct == hits);
  CHECK(sums.count == 3);

  logits(1, 2) = std::numeric_limits<double>::quiet_NaN();
  const ablate::LossSums nan_sums = D::cross_entropy(logits, targets.data(), &dlogits, scale);
  CHECK(std::isnan(nan_sums.loss_sum));
  CHECK(dlogits.row(1).array().isNaN().all());
  CHECK(dlogits.row(0).array().isFinite().all());
}

TEST_CASE("CPU cross-entropy in float over a vocabulary of several blocks: first maximum, loss "
          "to float rounding, with or without the gradient") {
  using F = ablate::CPUBackend<float>;
  constexpr Eigen::Index kVocab = 1000;  // not a multiple of the kernel's block
  F::Tensor logits(5, kVocab);
  F::fill_normal(logits, 11, 3.0);
  logits(0, 300) = logits(0, 700) = 20.0f;  // ties across blocks: the first maximum counts
  logits(1, 300) = logits(1, 700) = 20.0f;
  logits(2, kVocab - 1) = 20.0f;  // in the last, partial block
  logits(3, 0) = 20.0f;
  logits(4, 5) = logits(4, 6) = 20.0f;  // a tie within one block
  const std::vector<std::int32_t> targets = {300, 700, kVocab - 1, 0, 5};
  F::Tensor dlogits;
  const double scale = 0.5;
  const ablate::LossSums sums = F::cross_entropy(logits, targets.data(), &dlogits, scale);
  const ablate::LossSums no_grad = F::cross_entropy(logits, targets.data(), nullptr, scale);

  const Eigen::MatrixXd z = logits.cast<double>();
  double loss = 0;
  for (Eigen::Index r = 0; r < z.rows(); ++r) {
    const double lse = std::log(z.row(r).array().exp().sum());
    const auto t = static_cast<Eigen::Index>(targets[static_cast<std::size_t>(r)]);
    loss += lse - z(r, t);
    for (Eigen::Index c = 0; c < kVocab; ++c) {
      const double expected = scale * (std::exp(z(r, c) - lse) - (c == t ? 1.0 : 0.0));
      // float rounding of p - 1 at the target: an absolute bound there
      CHECK(std::abs(dlogits(r, c) - expected) <= 1e-5 * std::abs(expected) + 1e-7);
    }
  }
  CHECK(sums.loss_sum == doctest::Approx(loss).epsilon(1e-6));
  // rows 0, 2, 3, 4: row 1's first maximum is at 300, not at its target (the last maximum
  // would hit rows 1, 2, 3 instead)
  CHECK(sums.correct == 4);
  CHECK(no_grad.loss_sum == sums.loss_sum);
  CHECK(no_grad.correct == sums.correct);

  logits(4, 900) = std::numeric_limits<float>::quiet_NaN();
  const ablate::LossSums nan_sums = F::cross_entropy(logits, targets.data(), &dlogits, scale);
  CHECK(std::isnan(nan_sums.loss_sum));
  CHECK(dlogits.row(4).array().isNaN().all());
  CHECK(dlogits.row(3).array().isFinite().all());
}

TEST_CASE("CPU cross-entropy and embedding reject ids outside their table or row") {
  D::Tensor logits(2, 5), dlogits;
  D::set_zero(logits);
  for (const std::int32_t bad : {-1, 5}) {
    CAPTURE(bad);
    const std::vector<std::int32_t> targets = {0, bad};
    CHECK_THROWS_WITH_AS(D::cross_entropy(logits, targets.data(), &dlogits, 1.0),
                         doctest::Contains("target id"), std::out_of_range);
  }

  D::Tensor table(4, 3), y, dy(2, 3);
  D::set_zero(table);
  D::set_zero(dy);
  const std::vector<std::int32_t> bad_ids = {1, 4};
  CHECK_THROWS_WITH_AS(D::embedding_forward(y, bad_ids.data(), 2, table, 1.0),
                       doctest::Contains("token id 4 at row 1 is outside [0, 4)"), std::out_of_range);
  CHECK_THROWS_AS(D::embedding_backward(table, bad_ids.data(), dy, 1.0), std::out_of_range);
  const std::vector<std::int32_t> ids = {1, 3};
  D::Tensor narrow(2, 2);
  D::set_zero(narrow);
  CHECK_THROWS_WITH_AS(D::embedding_backward(table, ids.data(), narrow, 1.0),
                       doctest::Contains("dy has 2 columns"), ablate::invalid_input);
  D::embedding_backward(table, ids.data(), dy, 1.0);  // the right shapes still work
  CHECK(table.isZero(0));
}

TEST_CASE("CPU cross-entropy in place (dlogits = logits) gives the same loss and gradient") {
  D::Tensor logits(3, 7), separate;
  D::fill_uniform(logits, 5, 3.0);
  const std::vector<std::int32_t> targets = {0, 6, 3};
  const auto expected = D::cross_entropy(logits, targets.data(), &separate, 0.5);
  D::Tensor in_place = logits;
  const auto got = D::cross_entropy(in_place, targets.data(), &in_place, 0.5);
  CHECK(got.loss_sum == expected.loss_sum);
  CHECK(got.correct == expected.correct);
  CHECK(in_place == separate);
}

TEST_CASE("CPU RoPE and the blocks around the kernels refuse misuse instead of crashing") {
  D::Tensor x(8, 8);
  D::set_zero(x);
  const auto rope = [&](Eigen::Index seq, Eigen::Index heads, Eigen::Index offset, Eigen::Index dim) {
    D::rope_apply(x, seq, heads, 4, offset, dim, 10000.0, ablate::RopeLayout::Interleaved, false);
  };
  CHECK_THROWS_WITH_AS(rope(0, 2, 0, 4), doctest::Contains("not whole sequences of 0 positions"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(rope(3, 2, 0, 4), doctest::Contains("8 rows are not whole sequences of 3"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(rope(4, 2, 0, 3), doctest::Contains("rope_dim must be even"), ablate::invalid_input);
  CHECK_THROWS_WITH_AS(rope(4, 2, 2, 4), doctest::Contains("does not fit in a head of stride 4"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(rope(4, 3, 0, 4), doctest::Contains("3 heads of stride 4 need 12 columns"),
                       ablate::invalid_input);
  CHECK_NOTHROW(rope(4, 2, 0, 4));

  // The embedding's backward reads one id per row of dx: only the forward's tokens.
  ablate::ParameterStore<D> store;
  ablate::Initializer init(1, 0.02, ablate::InitScheme::Normal);
  ablate::TiedEmbedding<D> embedding(store, init, 5, 3);
  D::Tensor dx(4, 3);
  D::set_zero(dx);
  CHECK_THROWS_WITH_AS(embedding.backward(dx), doctest::Contains("the last forward had 0 tokens"),
                       ablate::invalid_input);
  ablate::Tokens tokens(1, 2);
  tokens(0, 0) = 1;
  tokens(0, 1) = 4;
  D::Tensor y;
  embedding.forward(y, tokens);
  CHECK_THROWS_WITH_AS(embedding.backward(dx), doctest::Contains("dx has 4 rows but the last forward had 2"),
                       ablate::invalid_input);

  // Dropout in training needs the pass's random stream.
  ablate::Dropout<D> dropout(0.5);
  ablate::PassContext ctx;
  ctx.training = true;
  CHECK_THROWS_WITH_AS(dropout.forward(y, ctx), doctest::Contains("training needs a random stream"),
                       ablate::invalid_input);
}

TEST_CASE("CPU linear, norm and attention kernels reject operands of the wrong shape") {
  const auto zeros = [](Eigen::Index rows, Eigen::Index cols) {
    D::Tensor t(rows, cols);
    t.setZero();
    return t;
  };
  const D::Tensor x = zeros(6, 4), w = zeros(3, 4), b = zeros(1, 3), dy = zeros(6, 3);
  D::Tensor y, dx, dw = zeros(3, 4), db = zeros(1, 3);
  const auto invalid = [](auto&& call, const char* text) {
    CHECK_THROWS_WITH_AS(call(), doctest::Contains(text), ablate::invalid_input);
  };
  invalid([&] { D::linear_forward(y, zeros(6, 5), w, &b); },
          "x is [6, 5] but the weight is [3, 4]");
  const D::Tensor column_bias = zeros(3, 1);
  invalid([&] { D::linear_forward(y, x, w, &column_bias); }, "the bias is [3, 1]");
  invalid([&] { D::linear_backward(&dx, dw, &db, zeros(6, 2), x, w); }, "dy is [6, 2]");
  invalid([&] { D::linear_backward(&dx, dw, &db, zeros(5, 3), x, w); }, "dy is [5, 3]");
  D::Tensor wrong_dw = zeros(4, 3);
  invalid([&] { D::linear_backward(&dx, wrong_dw, &db, dy, x, w); },
          "the weight gradient is [4, 3]");
  D::Tensor small_dx = zeros(6, 3);
  invalid([&] { D::linear_backward(&small_dx, dw, &db, dy, x, w, /*accumulate_dx=*/true); },
          "the accumulated dx is [6, 3]");
  D::linear_backward(&dx, dw, &db, dy, x, w);  // the right shapes still work

  D::Tensor rstd, mean, nw = zeros(1, 4), ndw = zeros(1, 4), ndb = zeros(1, 4);
  invalid([&] { D::rmsnorm_forward(y, rstd, x, zeros(1, 3), 1e-6); }, "the weight is [1, 3]");
  D::rmsnorm_forward(y, rstd, x, nw, 1e-6);
  invalid([&] { D::rmsnorm_backward(dx, ndw, zeros(6, 3), x, nw, rstd); }, "dy is [6, 3]");
  invalid([&] { D::rmsnorm_backward(dx, ndw, x, x, nw, zeros(5, 1)); }, "the saved statistics");
  invalid([&] { D::layernorm_forward(y, mean, rstd, x, nw, zeros(1, 5), 1e-6); },
          "the weight is [1, 5]");
  D::layernorm_forward(y, mean, rstd, x, nw, nw, 1e-6);
  invalid([&] { D::layernorm_backward(dx, ndw, ndb, x, x, nw, zeros(6, 2), rstd); },
          "the saved means");

  ablate::AttentionShape a;
  a.batch = 2;
  a.seq = 3;
  a.heads = 2;
  a.qk_dim = 2;
  a.v_dim = 2;
  D::Tensor out, probs, dq, dk, dv;
  const D::Tensor qkv = zeros(6, 4);
  invalid([&] { D::attention_forward(out, probs, zeros(5, 4), qkv, qkv, a, 0.0, 1); },
          "q is [5, 4], expected [6, 4]");
  invalid([&] { D::attention_forward(out, probs, qkv, zeros(6, 3), qkv, a, 0.0, 1); },
          "k is [6, 3]");
  invalid([&] { D::attention_forward(out, probs, qkv, qkv, qkv, a, 1.0, 1); }, "dropout_p");
  D::attention_forward(out, probs, qkv, qkv, qkv, a, 0.0, 1);
  invalid([&] { D::attention_backward(dq, dk, dv, zeros(6, 3), probs, qkv, qkv, qkv, a, 0.0, 1); },
          "dout is [6, 3]");
  invalid([&] { D::attention_backward(dq, dk, dv, qkv, zeros(12, 2), qkv, qkv, qkv, a, 0.0, 1); },
          "the saved probabilities");
}

TEST_CASE("CPU element-wise, column and scatter kernels reject operands of the wrong shape") {
  const D::Tensor y = ablate_test::check_elementwise_shape_errors<D>(
      [](Eigen::Index rows, Eigen::Index cols) -> D::Tensor { return D::Tensor::Zero(rows, cols); },
      [](const std::vector<std::int32_t>& v) { return v; });
  CHECK(y.isZero());
}

TEST_CASE("CPU tensors stay valid when their memory cannot be allocated") {
  // Eigen's own resize frees the old buffer before it allocates: a failure there left the
  // tensor pointing at freed memory, which its destructor then freed again.  2^62 floats is a
  // request Eigen refuses before it calls malloc, so this runs under the sanitizers too.
  using F = ablate::CPU;
  F::Tensor t(4, 4);
  t.setOnes();
  const Eigen::Index huge = Eigen::Index{1} << 31;
  CHECK_THROWS_AS(F::resize(t, huge, huge), std::bad_alloc);
  CHECK(t.size() == 0);  // empty, not dangling
  F::resize(t, 2, 3);
  t.setConstant(2.0f);
  CHECK(t.sum() == 12.0f);
  F::Tensor src(3, 3);
  src.setOnes();
  F::copy(t, src);  // sized through the same path
  CHECK(t.sum() == 9.0f);
}

TEST_CASE("an exception in a parallel loop's body reaches the caller instead of ending the program") {
  ablate::ParallelErrors errors;
  std::vector<int> done(64, 0);
  ABLATE_PARALLEL_FOR
  for (int i = 0; i < 64; ++i) errors.run([&] {
    if (i == 37) throw std::bad_alloc();
    done[static_cast<std::size_t>(i)] = 1;
  });
  CHECK_THROWS_AS(errors.rethrow(), std::bad_alloc);
  CHECK(std::count(done.begin(), done.end(), 1) == 63);  // the other iterations ran
  ablate::ParallelErrors none;
  none.run([] {});
  none.rethrow();
}
