// MoE kernels against the CPU backend: router activations within fp32 rounding; top-K,
// group-limited top-K, expert counts and the dispatch plan exactly (ties, K = 1, K = E, an
// expert without tokens); the expert gathers and scatters within fp32 rounding.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>
#include <vector>

#include "ablate/core/error.hpp"
#include "cuda_test_util.cuh"

using namespace cuda_test;
using ablate::CPU;
using ablate::CUDA;

namespace {

using GpuIndices = CUDA::Indices;

GpuIndices indices_to_gpu(const std::vector<std::int32_t>& v) {
  GpuIndices g;
  g.from_host(v);
  return g;
}

// Random scores rounded to a few levels, so that most rows hold ties.
CpuTensor tied_tensor(std::ptrdiff_t rows, std::ptrdiff_t cols, std::uint64_t key) {
  CpuTensor t = random_tensor(rows, cols, key);
  for (std::ptrdiff_t i = 0; i < t.size(); ++i) t.data()[i] = std::round(t.data()[i] * 1.5f) / 2.f;
  return t;
}

// Bit-for-bit equality of a device tensor and a CPU tensor.
bool same(const GpuTensor& a, const CpuTensor& b) {
  const CpuTensor h = to_cpu(a);
  return h.rows() == b.rows() && h.cols() == b.cols() && (h.array() == b.array()).all();
}

}  // namespace

TEST_CASE("cuda moe: router activations match the CPU backend") {
  for (auto [n, e] : {std::pair{37, 8}, std::pair{64, 256}, std::pair{5, 1}, std::pair{3, 300},
                      std::pair{129, 33}}) {
    CAPTURE(n);
    CAPTURE(e);
    const CpuTensor x = random_tensor(n, e, 100, 2.0), dy = random_tensor(n, e, 101);
    const GpuTensor gx = to_gpu(x), gdy = to_gpu(dy);

    CpuTensor y, dx;
    GpuTensor gy, gdx;
    CPU::row_softmax(y, x);
    CUDA::row_softmax(gy, gx);
    CHECK(relative_error(gy, y) < kFp32Tolerance);
    GpuTensor inplace = gx;  // y may alias x
    CUDA::row_softmax(inplace, inplace);
    CHECK(relative_error(inplace, y) < kFp32Tolerance);
    CPU::row_softmax_backward(dx, y, dy);
    CUDA::row_softmax_backward(gdx, gy, gdy);
    CHECK(relative_error(gdx, dx) < kFp32Tolerance);

    CPU::sigmoid_forward(y, x);
    CUDA::sigmoid_forward(gy, gx);
    CHECK(relative_error(gy, y) < kFp32Tolerance);
    CPU::sigmoid_backward(dx, dy, y);
    CUDA::sigmoid_backward(gdx, gdy, gy);
    CHECK(relative_error(gdx, dx) < kFp32Tolerance);

    // The same counter-based noise stream as the CPU backend.
    CpuTensor noisy = x;
    GpuTensor gnoisy = gx;
    CPU::add_normal_noise(noisy, 1234, 0.3);
    CUDA::add_normal_noise(gnoisy, 1234, 0.3);
    CHECK(relative_error(gnoisy, noisy) < kFp32Tolerance);
    CHECK(relative_error(gnoisy, x) > 1e-3);  // the noise was added

    const CpuTensor row = random_tensor(1, e, 102);
    CpuTensor broadcast = x;
    GpuTensor gbroadcast = gx;
    CPU::add_row_broadcast(broadcast, row);
    CUDA::add_row_broadcast(gbroadcast, to_gpu(row));
    CHECK(relative_error(gbroadcast, broadcast) < kFp32Tolerance);

    CpuTensor means;
    GpuTensor gmeans;
    CPU::column_means(means, x);
    CUDA::column_means(gmeans, gx);
    CHECK(gmeans.rows() == 1);
    CHECK(relative_error(gmeans, means) < kFp32Tolerance);

    // normalize_rows on positive rows (like selected probabilities), both router settings.
    CpuTensor g;
    CPU::sigmoid_forward(g, x);
    const GpuTensor gg = to_gpu(g);
    for (auto [eps, scale] : {std::pair{1e-20, 2.5}, std::pair{0.0, 1.0}}) {
      CAPTURE(eps);
      CpuTensor w, dg;
      GpuTensor gw, gdg;
      CPU::normalize_rows(w, g, eps, scale);
      CUDA::normalize_rows(gw, gg, eps, scale);
      CHECK(relative_error(gw, w) < kFp32Tolerance);
      CPU::normalize_rows_backward(dg, dy, g, eps, scale);
      CUDA::normalize_rows_backward(gdg, gdy, gg, eps, scale);
      CHECK(relative_error(gdg, dg) < kFp32Tolerance);
    }
  }
}

TEST_CASE("cuda moe: top-k selection matches the CPU exactly, ties included") {
  for (int e : {1, 8, 64, 256}) {
    for (int k : {1, 2, e / 2, e}) {
      if (k < 1 || k > e) continue;
      CAPTURE(e);
      CAPTURE(k);
      for (bool ties : {false, true}) {
        CAPTURE(ties);
        const CpuTensor scores = ties ? tied_tensor(301, e, 200 + e + k) : random_tensor(301, e, 300 + e + k);
        CPU::Indices idx;
        GpuIndices gidx;
        CPU::topk_rows(idx, scores, k);
        CUDA::topk_rows(gidx, to_gpu(scores), k);
        REQUIRE(gidx.size() == idx.size());
        CHECK(gidx.to_host() == idx);
      }
    }
  }
  // A constant row: ties go to the lower column, so top-k is 0, 1, ..., k-1.
  const CpuTensor flat = CpuTensor::Constant(2, 6, 0.25f);
  GpuIndices gidx;
  CUDA::topk_rows(gidx, to_gpu(flat), 4);
  CHECK(gidx.to_host() == std::vector<std::int32_t>{0, 1, 2, 3, 0, 1, 2, 3});
}

TEST_CASE("cuda moe: group-limited top-k matches the CPU exactly") {
  // (experts, n_group, topk_group, k): groups of one, one group, K = E, ties between groups.
  for (auto [e, groups, keep, k] : {std::tuple{16, 4, 2, 4}, std::tuple{16, 4, 1, 1},
                                    std::tuple{16, 16, 3, 3}, std::tuple{16, 1, 1, 16},
                                    std::tuple{64, 8, 4, 8}, std::tuple{256, 8, 4, 8},
                                    std::tuple{12, 3, 3, 12}}) {
    CAPTURE(e);
    CAPTURE(groups);
    CAPTURE(keep);
    CAPTURE(k);
    for (bool ties : {false, true}) {
      CAPTURE(ties);
      CpuTensor choice = ties ? tied_tensor(203, e, 400 + e) : random_tensor(203, e, 500 + e);
      CPU::sigmoid_forward(choice, choice);  // scores in (0, 1), as the GLM4 router has them
      CPU::Indices idx;
      CpuTensor masked, group_scores;
      GpuIndices gidx;
      GpuTensor gmasked, ggroup_scores;
      CPU::group_limited_topk(idx, masked, group_scores, choice, groups, keep, k);
      CUDA::group_limited_topk(gidx, gmasked, ggroup_scores, to_gpu(choice), groups, keep, k);
      CHECK(gidx.to_host() == idx);
      CHECK(same(gmasked, masked));
      CHECK(same(ggroup_scores, group_scores));
    }
  }
}

TEST_CASE("cuda moe: column gathers and scatters match the CPU exactly") {
  const int n = 77, e = 24, k = 5;
  const CpuTensor scores = random_tensor(n, e, 600), src = random_tensor(n, k, 601);
  CPU::Indices idx;
  CPU::topk_rows(idx, scores, k);
  const GpuIndices gidx = indices_to_gpu(idx);
  CpuTensor picked, scattered;
  GpuTensor gpicked, gscattered;
  CPU::gather_columns(picked, scores, idx, k);
  CUDA::gather_columns(gpicked, to_gpu(scores), gidx, k);
  CHECK(same(gpicked, picked));
  CPU::scatter_columns(scattered, src, idx, e);
  GpuTensor garbage = to_gpu(random_tensor(n, e, 602));  // scatter_columns zeroes the rest
  gscattered = garbage;
  CUDA::scatter_columns(gscattered, to_gpu(src), gidx, e);
  CHECK(same(gscattered, scattered));
}

namespace {

// Routing of n tokens to k of e experts with expert `empty` given no token (k < e), taken by
// both backends from the same scores; checks that they agree.
std::pair<CPU::Indices, GpuIndices> routing(int n, int e, int k, int empty, std::uint64_t key) {
  CpuTensor scores = random_tensor(n, e, key);
  if (k < e && empty >= 0) scores.col(empty).setConstant(-1e9f);
  CPU::Indices idx;
  GpuIndices gidx;
  CPU::topk_rows(idx, scores, k);
  CUDA::topk_rows(gidx, to_gpu(scores), k);
  CHECK(gidx.to_host() == idx);
  return {idx, gidx};
}

}  // namespace

TEST_CASE("cuda moe: expert counts and the dispatch plan match the CPU exactly") {
  // (tokens, experts, k, expert without tokens): many chunks (~100k slots), E = 256, more
  // experts than the plan kernels' threads (E = 300), K = 1, K = E, a single token, no tokens.
  for (auto [n, e, k, empty] :
       {std::tuple{1000, 8, 2, 3}, std::tuple{12289, 64, 8, 63}, std::tuple{3001, 256, 1, 0},
        std::tuple{300, 256, 8, 17}, std::tuple{2000, 300, 4, 7}, std::tuple{50, 16, 16, -1},
        std::tuple{1, 4, 4, -1}, std::tuple{1, 6, 2, 5}, std::tuple{0, 8, 2, -1}}) {
    CAPTURE(n);
    CAPTURE(e);
    CAPTURE(k);
    const auto [idx, gidx] = routing(n, e, k, empty, 700 + static_cast<std::uint64_t>(n));
    const auto E = static_cast<std::size_t>(e), K = static_cast<std::size_t>(k);

    std::vector<std::size_t> counts, gcounts;
    CPU::moe_expert_counts(counts, idx, E);
    CUDA::moe_expert_counts(gcounts, gidx, E);
    CHECK(gcounts == counts);
    if (empty >= 0 && k < e && n > 0) CHECK(gcounts[static_cast<std::size_t>(empty)] == 0);

    CPU::Indices rows, slots;
    std::vector<std::size_t> offsets;
    CPU::moe_dispatch_plan(rows, slots, offsets, idx, E, K);

    // With the counts kept by moe_expert_counts, on a copy (which keeps them too), and on
    // indices that came from the host (nothing kept: the plan copies the counts itself).
    const GpuIndices copy = gidx;
    const GpuIndices from_host = indices_to_gpu(idx);
    const GpuIndices* sources[] = {&gidx, &copy, &from_host};
    for (const GpuIndices* source : sources) {
      GpuIndices grows, gslots;
      std::vector<std::size_t> goffsets;
      CUDA::moe_dispatch_plan(grows, gslots, goffsets, *source, E, K);
      CHECK(goffsets == offsets);
      CHECK(grows.to_host() == rows);
      CHECK(gslots.to_host() == slots);
      // Counts asked after a plan agree too.
      std::vector<std::size_t> after;
      CUDA::moe_expert_counts(after, *source, E);
      CHECK(after == counts);
    }
    // Stability spelled out on the plan both backends produced (equal above): slots ascending
    // within each expert, rows = slot / k.
    const std::vector<std::int32_t> hs = slots, hr = rows;
    bool stable = true;
    for (std::size_t x = 0; x < E; ++x)
      for (std::size_t p = offsets[x]; p < offsets[x + 1]; ++p) {
        stable = stable && idx[static_cast<std::size_t>(hs[p])] == static_cast<std::int32_t>(x);
        stable = stable && hr[p] == hs[p] / k;
        if (p > offsets[x]) stable = stable && hs[p - 1] < hs[p];
      }
    CHECK(stable);
  }
}

TEST_CASE("cuda moe: expert gathers, weighted combine and weight gradients match the CPU") {
  // The MoE block's forward and backward data movement, expert by expert, with an expert that
  // gets no tokens; expert outputs are random stand-ins.
  for (auto [n, d, e, k] : {std::tuple{257, 96, 8, 2}, std::tuple{64, 33, 4, 4},
                            std::tuple{100, 128, 16, 1}}) {
    CAPTURE(n);
    CAPTURE(d);
    CAPTURE(e);
    CAPTURE(k);
    const auto [idx, gidx] = routing(n, e, k, k < e ? 1 : -1, 800 + static_cast<std::uint64_t>(d));
    const auto E = static_cast<std::size_t>(e), K = static_cast<std::size_t>(k);
    const CpuTensor x = random_tensor(n, d, 801), dy = random_tensor(n, d, 802);
    CpuTensor weights;
    CPU::row_softmax(weights, random_tensor(n, k, 803));
    const GpuTensor gx = to_gpu(x), gdy = to_gpu(dy), gweights = to_gpu(weights);

    CPU::Indices rows, slots;
    std::vector<std::size_t> offsets;
    GpuIndices grows, gslots;
    std::vector<std::size_t> goffsets;
    CPU::moe_dispatch_plan(rows, slots, offsets, idx, E, K);
    CUDA::moe_dispatch_plan(grows, gslots, goffsets, gidx, E, K);
    REQUIRE(goffsets == offsets);

    CpuTensor y = CpuTensor::Zero(n, d), dx = CpuTensor::Zero(n, d), dweights = CpuTensor::Zero(n, k);
    GpuTensor gy = to_gpu(y), gdx = to_gpu(dx), gdweights = to_gpu(dweights);
    int empty_experts = 0;
    for (std::size_t x_e = 0; x_e < E; ++x_e) {
      CAPTURE(x_e);
      const std::size_t begin = offsets[x_e], count = offsets[x_e + 1] - begin;
      if (count == 0) {
        ++empty_experts;
        continue;
      }
      CpuTensor batch;
      GpuTensor gbatch;
      CPU::gather_rows(batch, x, rows, begin, count);
      CUDA::gather_rows(gbatch, gx, grows, begin, count);
      CHECK(same(gbatch, batch));

      const CpuTensor out = random_tensor(static_cast<std::ptrdiff_t>(count), d, 900 + x_e);
      const GpuTensor gout = to_gpu(out);
      CPU::scatter_add_rows_weighted(y, out, rows, slots, weights, begin);
      CUDA::scatter_add_rows_weighted(gy, gout, grows, gslots, gweights, begin);

      CPU::gather_row_dots(dweights, dy, out, rows, slots, begin);
      CUDA::gather_row_dots(gdweights, gdy, gout, grows, gslots, begin);
      CPU::gather_rows_weighted(batch, dy, rows, slots, weights, begin, count);
      CUDA::gather_rows_weighted(gbatch, gdy, grows, gslots, gweights, begin, count);
      CHECK(relative_error(gbatch, batch) < kFp32Tolerance);
      CPU::scatter_add_rows(dx, out, rows, begin);
      CUDA::scatter_add_rows(gdx, gout, grows, begin);
    }
    if (k < e) CHECK(empty_experts >= 1);
    CHECK(relative_error(gy, y) < kFp32Tolerance);
    CHECK(relative_error(gdx, dx) < kFp32Tolerance);
    CHECK(relative_error(gdweights, dweights) < kFp32Tolerance);
  }
}

TEST_CASE("cuda moe: balance-bias update matches the CPU exactly") {
  const std::vector<std::size_t> loads{5, 1, 3, 3, 0, 6};  // mean 3: below, above and equal
  const CpuTensor bias0 = random_tensor(1, 6, 1000, 0.01);
  CpuTensor bias = bias0;
  GpuTensor gbias = to_gpu(bias0);
  CPU::moe_balance_bias(bias, loads, 1e-3);
  CUDA::moe_balance_bias(gbias, loads, 1e-3);
  CHECK(same(gbias, bias));
  CHECK(!same(gbias, bias0));
  CUDA::moe_balance_bias(gbias, {}, 1e-3);  // no loads: no change
  CHECK(same(gbias, bias));
}

TEST_CASE("cuda moe: Indices copy, move and host round trip, and bad routing throws") {
  const std::vector<std::int32_t> v{0, 3, 1, 3, 2, 2, 0};
  GpuIndices a = indices_to_gpu(v);
  CHECK(a.size() == v.size());
  GpuIndices b = a;
  GpuIndices c = std::move(a);
  CHECK(a.size() == 0);
  CHECK(b.to_host() == v);
  CHECK(c.to_host() == v);
  GpuIndices d;
  CHECK(d.empty());
  d = c;
  CHECK(d.to_host() == v);
  b = GpuIndices();
  CHECK(b.empty());

  // Entries outside [0, experts) are reported, not written out of bounds.
  std::vector<std::size_t> counts;
  CHECK_THROWS_AS(CUDA::moe_expert_counts(counts, c, 3), ablate::invalid_input);
  GpuIndices rows, slots;
  std::vector<std::size_t> offsets;
  CHECK_THROWS_AS(CUDA::moe_dispatch_plan(rows, slots, offsets, c, 3, 1), ablate::invalid_input);
  CUDA::moe_expert_counts(counts, c, 4);
  CHECK(counts == std::vector<std::size_t>{2, 1, 2, 2});
  CUDA::moe_dispatch_plan(rows, slots, offsets, c, 4, 1);
  CHECK(offsets == std::vector<std::size_t>{0, 2, 3, 5, 7});
  CHECK(slots.to_host() == std::vector<std::int32_t>{0, 6, 2, 4, 5, 1, 3});
  CHECK(rows.to_host() == std::vector<std::int32_t>{0, 6, 2, 4, 5, 1, 3});
  // Writing through data() forgets the kept counts: the next plan counts afresh.
  const std::vector<std::int32_t> w{1, 1, 1, 1, 1, 1, 1};
  ablate::cuda::copy_to_device(c.data(), w.data(), w.size());
  CUDA::moe_dispatch_plan(rows, slots, offsets, c, 4, 1);
  CHECK(offsets == std::vector<std::size_t>{0, 0, 7, 7, 7});
}
