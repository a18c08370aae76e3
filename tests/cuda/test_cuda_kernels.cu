// The fused element-wise, norm, cross-entropy, embedding and optimizer kernels of the CUDA
// backend against the CPU backend on the same random inputs (odd shapes included).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "ablate/train/newton_schulz.hpp"
#include "cuda_test_util.cuh"

using namespace cuda_test;
using ablate::CPU;
using ablate::CUDA;

namespace {

// Bitwise equality: the deterministic reductions give the same bits run after run.
bool same_bits(const GpuTensor& a, const GpuTensor& b) {
  const CpuTensor x = to_cpu(a), y = to_cpu(b);
  return x.rows() == y.rows() && x.cols() == y.cols() &&
         std::equal(x.data(), x.data() + x.size(), y.data());
}

}  // namespace

TEST_CASE("cuda kernels: silu and swiglu match the CPU backend") {
  for (auto [rows, cols] : {std::tuple{37, 19}, std::tuple{129, 1031}}) {
    CAPTURE(rows);
    CAPTURE(cols);
    const CpuTensor x = random_tensor(rows, cols, 1, 3.0), up = random_tensor(rows, cols, 2),
                    dy = random_tensor(rows, cols, 3);
    const GpuTensor gx = to_gpu(x), gup = to_gpu(up), gdy = to_gpu(dy);
    CpuTensor y, dx, h, dgate, dup;
    GpuTensor gy, gdx, gh, gdgate, gdup;
    CPU::silu_forward(y, x);
    CUDA::silu_forward(gy, gx);
    CPU::silu_backward(dx, dy, x);
    CUDA::silu_backward(gdx, gdy, gx);
    CPU::swiglu_forward(h, x, up);
    CUDA::swiglu_forward(gh, gx, gup);
    CPU::swiglu_backward(dgate, dup, dy, x, up);
    CUDA::swiglu_backward(gdgate, gdup, gdy, gx, gup);
    CHECK(relative_error(gy, y) < kFp32Tolerance);
    CHECK(relative_error(gdx, dx) < kFp32Tolerance);
    CHECK(relative_error(gh, h) < kFp32Tolerance);
    CHECK(relative_error(gdgate, dgate) < kFp32Tolerance);
    CHECK(relative_error(gdup, dup) < kFp32Tolerance);
  }
}

TEST_CASE("cuda kernels: dropout drops exactly the CPU backend's elements") {
  for (auto [rows, cols] : {std::tuple{37, 19}, std::tuple{300, 257}}) {
    for (double p : {0.1, 0.5, 0.9}) {
      CAPTURE(rows);
      CAPTURE(cols);
      CAPTURE(p);
      const CpuTensor x = random_tensor(rows, cols, 4);
      CpuTensor c = x;
      GpuTensor g = to_gpu(x);
      const std::uint64_t key = ablate::hash_combine(77, static_cast<std::uint64_t>(p * 100));
      CPU::dropout_apply(c, p, key);
      CUDA::dropout_apply(g, p, key);
      const CpuTensor back = to_cpu(g);
      std::ptrdiff_t mismatched = 0, dropped = 0;
      for (std::ptrdiff_t i = 0; i < c.size(); ++i) {
        mismatched += (c.data()[i] == 0.f) != (back.data()[i] == 0.f);
        dropped += back.data()[i] == 0.f;
      }
      CHECK(mismatched == 0);
      CHECK(dropped > 0);
      CHECK(dropped < c.size());
      CHECK(relative_error(back, c) < 1e-7);
      // The backward is the same call on dy: the same mask again.
      CPU::dropout_apply(c, p, key);
      CUDA::dropout_apply(g, p, key);
      CHECK(relative_error(g, c) < 1e-7);
    }
  }
  // p = 0 leaves the tensor alone.
  const CpuTensor x = random_tensor(5, 7, 5);
  GpuTensor g = to_gpu(x);
  CUDA::dropout_apply(g, 0.0, 9);
  CHECK(relative_error(g, x) == 0.0);
}

// (rows, cols): tiny and odd rows, one block of 1024 threads per row, several rows per block of
// the backward (rows above its block count), a single column.
constexpr std::tuple<int, int> kNormShapes[] = {{37, 19}, {5, 1000}, {300, 4096}, {1000, 768}, {3, 1}, {2, 5000}};

TEST_CASE("cuda kernels: rmsnorm forward/backward match the CPU backend") {
  for (auto [rows, cols] : kNormShapes) {
    CAPTURE(rows);
    CAPTURE(cols);
    const CpuTensor x = random_tensor(rows, cols, 10, 2.0), dy = random_tensor(rows, cols, 11),
                    dw0 = random_tensor(1, cols, 13);
    const CpuTensor w = (random_tensor(1, cols, 12, 0.1).array() + 1.f).matrix();
    CpuTensor y, rstd, dx, dw = dw0;
    CPU::rmsnorm_forward(y, rstd, x, w, 1e-6);
    CPU::rmsnorm_backward(dx, dw, dy, x, w, rstd);

    const GpuTensor gx = to_gpu(x), gw = to_gpu(w), gdy = to_gpu(dy);
    GpuTensor gy, grstd, gdx, gdw = to_gpu(dw0);
    CUDA::rmsnorm_forward(gy, grstd, gx, gw, 1e-6);
    CUDA::rmsnorm_backward(gdx, gdw, gdy, gx, gw, grstd);
    CHECK(grstd.rows() == rows);
    CHECK(grstd.cols() == 1);
    CHECK(relative_error(grstd, rstd) < 1e-6);
    CHECK(relative_error(gy, y) < kFp32Tolerance);
    CHECK(relative_error(gdx, dx) < kFp32Tolerance);
    CHECK(relative_error(gdw, dw) < kFp32Tolerance);

    // The weight gradient is deterministic: a second run gives the same bits.
    GpuTensor gdx2, gdw2 = to_gpu(dw0);
    CUDA::rmsnorm_backward(gdx2, gdw2, gdy, gx, gw, grstd);
    CHECK(same_bits(gdw2, gdw));
    CHECK(same_bits(gdx2, gdx));
  }
}

TEST_CASE("cuda kernels: layernorm forward/backward match the CPU backend") {
  for (auto [rows, cols] : kNormShapes) {
    CAPTURE(rows);
    CAPTURE(cols);
    // An offset mean, so the centring matters.
    const CpuTensor x = (random_tensor(rows, cols, 20, 2.0).array() + 3.f).matrix();
    const CpuTensor dy = random_tensor(rows, cols, 21), b = random_tensor(1, cols, 23),
                    dw0 = random_tensor(1, cols, 24), db0 = random_tensor(1, cols, 25);
    const CpuTensor w = (random_tensor(1, cols, 22, 0.1).array() + 1.f).matrix();
    CpuTensor y, mean, rstd, dx, dw = dw0, db = db0;
    CPU::layernorm_forward(y, mean, rstd, x, w, b, 1e-5);
    CPU::layernorm_backward(dx, dw, db, dy, x, w, mean, rstd);

    const GpuTensor gx = to_gpu(x), gw = to_gpu(w), gb = to_gpu(b), gdy = to_gpu(dy);
    GpuTensor gy, gmean, grstd, gdx, gdw = to_gpu(dw0), gdb = to_gpu(db0);
    CUDA::layernorm_forward(gy, gmean, grstd, gx, gw, gb, 1e-5);
    CUDA::layernorm_backward(gdx, gdw, gdb, gdy, gx, gw, gmean, grstd);
    CHECK(gmean.rows() == rows);
    CHECK(gmean.cols() == 1);
    CHECK(relative_error(gmean, mean) < 1e-6);
    CHECK(relative_error(grstd, rstd) < 1e-6);
    CHECK(relative_error(gy, y) < kFp32Tolerance);
    CHECK(relative_error(gdx, dx) < kFp32Tolerance);
    CHECK(relative_error(gdw, dw) < kFp32Tolerance);
    CHECK(relative_error(gdb, db) < kFp32Tolerance);

    GpuTensor gdx2, gdw2 = to_gpu(dw0), gdb2 = to_gpu(db0);
    CUDA::layernorm_backward(gdx2, gdw2, gdb2, gdy, gx, gw, gmean, grstd);
    CHECK(same_bits(gdw2, gdw));
    CHECK(same_bits(gdb2, gdb));
  }
}

TEST_CASE("cuda kernels: cross-entropy matches the CPU backend, ties going to the first maximum") {
  for (auto [rows, vocab] : {std::tuple{37, 1000}, std::tuple{64, 50257}, std::tuple{9, 19}}) {
    CAPTURE(rows);
    CAPTURE(vocab);
    CpuTensor logits = random_tensor(rows, vocab, 30, 2.0);
    // Every row gets its maximum tied at columns a < b and at a + 32k (so that one thread of a
    // block of any multiple of 32 threads sees several of the ties).  Targets: a (a hit) in rows
    // 0 mod 3, the last tied column (a miss: Eigen's maxCoeff reports the first maximum) in rows
    // 1 mod 3, and a random column in rows 2 mod 3.
    std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
    std::size_t expected_hits = 0;
    for (int r = 0; r < rows; ++r) {
      const auto u = [&](int salt) {
        return static_cast<std::int32_t>(ablate::uniform01(31 + salt, static_cast<std::uint64_t>(r)) * vocab);
      };
      std::int32_t a = u(0) / 2, b = u(1);
      if (a == b) b = (a + 1) % vocab;
      if (a > b) std::swap(a, b);
      const float top = logits.row(r).maxCoeff() + 0.5f;
      std::int32_t last = b;
      logits(r, b) = top;
      for (std::int32_t c = a; c < vocab; c += 32) {
        logits(r, c) = top;
        last = std::max(last, c);
      }
      const std::int32_t random = u(2);
      targets[static_cast<std::size_t>(r)] = r % 3 == 0 ? a : r % 3 == 1 ? last : random;
      expected_hits += r % 3 == 0 || (r % 3 == 2 && random == a);
    }
    const double scale = 1.0 / rows;
    CpuTensor dlogits;
    const ablate::LossSums c = CPU::cross_entropy(logits, targets.data(), &dlogits, scale);
    REQUIRE(c.correct == expected_hits);

    const GpuTensor glogits = to_gpu(logits);
    GpuTensor gdlogits;
    const ablate::LossSums g = CUDA::cross_entropy(glogits, targets.data(), &gdlogits, scale);
    CHECK(g.loss_sum == doctest::Approx(c.loss_sum).epsilon(1e-6));
    CHECK(g.correct == c.correct);
    CHECK(g.count == c.count);
    CHECK(relative_error(gdlogits, dlogits) < kFp32Tolerance);

    // Without a gradient: the same sums, bit for bit.
    const ablate::LossSums g2 = CUDA::cross_entropy(glogits, targets.data(), nullptr, scale);
    CHECK(g2.loss_sum == g.loss_sum);
    CHECK(g2.correct == g.correct);
    CHECK(g2.count == g.count);
  }
  // A NaN logit makes its row's loss and gradient NaN, as on the CPU; a bad target throws.
  {
    CpuTensor logits = random_tensor(3, 1000, 15);
    logits(1, 517) = std::numeric_limits<float>::quiet_NaN();
    const std::vector<std::int32_t> targets = {4, 9, 999};
    CpuTensor dlogits;
    const GpuTensor glogits = to_gpu(logits);
    GpuTensor gdlogits;
    CHECK(std::isnan(CPU::cross_entropy(logits, targets.data(), &dlogits, 1.0).loss_sum));
    CHECK(std::isnan(CUDA::cross_entropy(glogits, targets.data(), &gdlogits, 1.0).loss_sum));
    const CpuTensor g = to_cpu(gdlogits);
    CHECK(g.row(1).array().isNaN().all());
    CHECK(g.row(0).array().isFinite().all());
    CHECK(g.row(2).array().isFinite().all());
    for (const std::int32_t bad : {-1, 1000}) {
      CAPTURE(bad);
      const std::vector<std::int32_t> wrong = {4, bad, 0};
      CHECK_THROWS_AS(CUDA::cross_entropy(glogits, wrong.data(), &gdlogits, 1.0), std::out_of_range);
    }
  }
  // Logits around 1000 (a diverging run): the gradient keeps float accuracy, because it is
  // exp(z - max) scaled, not exp(z - logsumexp) with the logsumexp rounded to float.
  {
    CpuTensor logits = random_tensor(4, 3000, 16, 2.0);
    logits.array() += 1000.f;
    const std::vector<std::int32_t> targets = {0, 17, 2999, 1500};
    CpuTensor dlogits;
    GpuTensor gdlogits;
    const ablate::LossSums c = CPU::cross_entropy(logits, targets.data(), &dlogits, 0.25);
    const ablate::LossSums g = CUDA::cross_entropy(to_gpu(logits), targets.data(), &gdlogits, 0.25);
    CHECK(g.loss_sum == doctest::Approx(c.loss_sum).epsilon(1e-6));
    CHECK(relative_error(gdlogits, dlogits) < kFp32Tolerance);
  }
  // A row with every logit -inf: its first maximum is index 0 on both backends.
  {
    CpuTensor logits = CpuTensor::Constant(2, 300, -std::numeric_limits<float>::infinity());
    logits(1, 7) = 1.f;
    const std::vector<std::int32_t> targets = {0, 7};
    const ablate::LossSums c = CPU::cross_entropy(logits, targets.data(), nullptr, 1.0);
    const ablate::LossSums g = CUDA::cross_entropy(to_gpu(logits), targets.data(), nullptr, 1.0);
    REQUIRE(c.correct == 2);
    CHECK(g.correct == c.correct);
  }
  // No rows: nothing to add.
  GpuTensor empty(0, 10), dempty;
  const ablate::LossSums e = CUDA::cross_entropy(empty, nullptr, &dempty, 1.0);
  CHECK(e.loss_sum == 0.0);
  CHECK(e.correct == 0);
  CHECK(e.count == 0);
  CHECK(dempty.rows() == 0);
}

TEST_CASE("cuda kernels: uploads through one pinned slot arrive intact, past the ring's depth") {
  // More uploads than the ring has buffers, each host array overwritten right after its call,
  // then one read-back of them all: every device copy holds what was passed.
  constexpr int kUploads = 3 * ablate::cuda::PinnedStage::kDepth + 1;
  constexpr std::size_t kLength = 1000;
  std::vector<ablate::cuda::DeviceBuffer<std::int32_t>> device(kUploads);
  std::vector<std::int32_t> host(kLength);
  for (int u = 0; u < kUploads; ++u) {
    device[static_cast<std::size_t>(u)].reserve(kLength + static_cast<std::size_t>(u));
    for (std::size_t i = 0; i < host.size(); ++i) host[i] = u * 10000 + static_cast<std::int32_t>(i);
    ablate::cuda::upload<std::int32_t, 90>(device[static_cast<std::size_t>(u)].data(), host.data(),
                                           kLength);
    std::fill(host.begin(), host.end(), -1);
  }
  for (int u = 0; u < kUploads; ++u) {
    std::vector<std::int32_t> back(kLength);
    ablate::cuda::copy_to_host(back.data(), device[static_cast<std::size_t>(u)].data(), kLength);
    bool intact = true;
    for (std::size_t i = 0; i < kLength; ++i)
      intact = intact && back[i] == u * 10000 + static_cast<std::int32_t>(i);
    CAPTURE(u);
    CHECK(intact);
  }
}

TEST_CASE("cuda kernels: embedding forward/backward match the CPU backend with repeated ids") {
  constexpr std::ptrdiff_t kVocab = 1000;
  for (auto [n, dim] : {std::tuple{37, 19}, std::tuple{513, 300}}) {
    CAPTURE(n);
    CAPTURE(dim);
    // Mostly ids from a handful of values (many repeats, interleaved), plus the table's ends.
    std::vector<std::int32_t> ids(static_cast<std::size_t>(n));
    for (std::size_t r = 0; r < ids.size(); ++r)
      ids[r] = r % 7 == 3 ? static_cast<std::int32_t>(kVocab - 1)
                          : static_cast<std::int32_t>(ablate::uniform01(40, r) * 10);
    ids[1] = 0;
    const double scale = std::sqrt(static_cast<double>(dim));
    const CpuTensor table = random_tensor(kVocab, dim, 41, 0.02), dy = random_tensor(n, dim, 42),
                    dtable0 = random_tensor(kVocab, dim, 43, 0.1);
    CpuTensor y, dtable = dtable0;
    CPU::embedding_forward(y, ids.data(), n, table, scale);
    CPU::embedding_backward(dtable, ids.data(), dy, scale);

    const GpuTensor gtable = to_gpu(table), gdy = to_gpu(dy);
    GpuTensor gy, gdtable = to_gpu(dtable0);
    CUDA::embedding_forward(gy, ids.data(), n, gtable, scale);
    CUDA::embedding_backward(gdtable, ids.data(), gdy, scale);
    CHECK(gy.rows() == n);
    CHECK(gy.cols() == dim);
    CHECK(relative_error(gy, y) < 1e-7);
    CHECK(relative_error(gdtable, dtable) < 1e-7);  // the CPU's order of additions
  }
  std::vector<std::int32_t> bad = {3, static_cast<std::int32_t>(kVocab)};
  GpuTensor table(kVocab, 4), y, dy(2, 4);
  CHECK_THROWS_AS(CUDA::embedding_forward(y, bad.data(), 2, table, 1.0), std::out_of_range);
  CHECK_THROWS_AS(CUDA::embedding_backward(table, bad.data(), dy, 1.0), std::out_of_range);
  // Ids are checked even when there is nothing to copy (a table without columns).
  GpuTensor flat(kVocab, 0), flat_dy(2, 0);
  CHECK_THROWS_AS(CUDA::embedding_forward(y, bad.data(), 2, flat, 1.0), std::out_of_range);
  CHECK_THROWS_AS(CUDA::embedding_backward(flat, bad.data(), flat_dy, 1.0), std::out_of_range);
  std::vector<std::int32_t> good = {3, 4};
  GpuTensor narrow_dy(2, 3);
  CHECK_THROWS_AS(CUDA::embedding_backward(table, good.data(), narrow_dy, 1.0), std::invalid_argument);
}

TEST_CASE("cuda kernels: AdamW steps match the CPU backend on both sides of beta1 = 0.5") {
  for (double beta1 : {0.9, 0.3}) {
    for (auto [rows, cols] : {std::tuple{37, 19}, std::tuple{129, 257}}) {
      CAPTURE(beta1);
      CAPTURE(rows);
      CAPTURE(cols);
      const double beta2 = beta1 > 0.5 ? 0.999 : 0.95;
      CpuTensor p = random_tensor(rows, cols, 50), m = CpuTensor::Zero(rows, cols), v = m;
      GpuTensor gp = to_gpu(p), gm = to_gpu(m), gv = to_gpu(v);
      for (std::int64_t step = 1; step <= 5; ++step) {
        const CpuTensor g = random_tensor(rows, cols, 60 + static_cast<std::uint64_t>(step), 0.1);
        CPU::adamw_update(p, g, m, v, 1e-2, beta1, beta2, 1e-8, 0.1, step);
        CUDA::adamw_update(gp, to_gpu(g), gm, gv, 1e-2, beta1, beta2, 1e-8, 0.1, step);
      }
      CHECK(relative_error(gp, p) < kFp32Tolerance);
      CHECK(relative_error(gm, m) < kFp32Tolerance);
      CHECK(relative_error(gv, v) < kFp32Tolerance);
    }
  }
}

TEST_CASE("cuda kernels: Newton-Schulz orthogonalisation matches the CPU backend within bf16") {
  // Its GEMMs take bf16 operands; a host emulation of that rounding (fp32 otherwise) against
  // fp64 measured 1.5e-2 to 2.5e-2 on these shapes (wide, tall, square), hence 6e-2.
  for (auto [rows, cols] : {std::tuple{64, 96}, std::tuple{96, 64}, std::tuple{512, 512}}) {
    CAPTURE(rows);
    CAPTURE(cols);
    const CpuTensor g = random_tensor(rows, cols, 90);
    CpuTensor out;
    GpuTensor gout;
    ablate::newton_schulz5<CPU>(out, g, static_cast<std::size_t>(rows), static_cast<std::size_t>(cols));
    ablate::newton_schulz5<CUDA>(gout, to_gpu(g), static_cast<std::size_t>(rows),
                                 static_cast<std::size_t>(cols));
    CHECK(gout.rows() == rows);
    CHECK(gout.cols() == cols);
    CHECK(relative_error(gout, out) < 6e-2);
  }
}

TEST_CASE("cuda kernels: batched Newton-Schulz and its stacked kernels match the CPU backend") {
  // Stacks of 3 matrices; 37 x 21 has leading dims no cuBLASLt algorithm may take (the tiled
  // fallback's batch over grid.z), 64 x 96 the strided batched GEMM.
  constexpr std::ptrdiff_t kCount = 3;
  for (auto [rows, cols] : {std::tuple{64, 96}, std::tuple{96, 64}, std::tuple{37, 21}}) {
    CAPTURE(rows);
    CAPTURE(cols);
    const CpuTensor x = random_tensor(kCount * rows, cols, 95),
                    y = random_tensor(kCount * cols, rows, 96),
                    c = random_tensor(kCount * rows, rows, 97);
    const GpuTensor gx = to_gpu(x), gy = to_gpu(y), gc = to_gpu(c);
    CpuTensor gram, prod, comb, tr, unit = x;
    GpuTensor ggram, gprod, gcomb, gtr, gunit = gx;
    CPU::gram(gram, x, kCount);
    CUDA::gram(ggram, gx, kCount);
    CPU::matmul(prod, x, y, kCount);
    CUDA::matmul(gprod, gx, gy, kCount);
    CPU::matmul_add(comb, gram, gram, 0.5, c, -2.0, kCount);
    CUDA::matmul_add(gcomb, ggram, ggram, 0.5, gc, -2.0, kCount);
    CPU::transpose(tr, x, kCount);
    CUDA::transpose(gtr, gx, kCount);
    CPU::normalize_frobenius(unit, 1e-7, kCount);
    CUDA::normalize_frobenius(gunit, 1e-7, kCount);
    CHECK(relative_error(ggram, gram) < kBf16Tolerance);
    CHECK(relative_error(gprod, prod) < kBf16Tolerance);
    CHECK(relative_error(gcomb, comb) < kBf16Tolerance);
    CHECK(relative_error(gtr, tr) == 0.0);
    CHECK(relative_error(gunit, unit) < kFp32Tolerance);

    CpuTensor out;
    GpuTensor gout;
    ablate::NewtonSchulzWork<CPU> work;
    ablate::NewtonSchulzWork<CUDA> gwork;
    ablate::newton_schulz5<CPU>(out, x, static_cast<std::size_t>(rows),
                                static_cast<std::size_t>(cols), 5, work, kCount);
    ablate::newton_schulz5<CUDA>(gout, gx, static_cast<std::size_t>(rows),
                                 static_cast<std::size_t>(cols), 5, gwork, kCount);
    CHECK(gout.rows() == kCount * rows);
    CHECK(relative_error(gout, out) < 6e-2);
    // The batched GPU result is each matrix's alone on the GPU, to bf16 rounding.
    for (std::ptrdiff_t i = 0; i < kCount; ++i) {
      CAPTURE(i);
      GpuTensor alone;
      ablate::newton_schulz5<CUDA>(alone, to_gpu(CpuTensor(x.middleRows(i * rows, rows))),
                                   static_cast<std::size_t>(rows), static_cast<std::size_t>(cols));
      CHECK(relative_error(alone, CpuTensor(to_cpu(gout).middleRows(i * rows, rows))) < 1e-2);
    }
  }
  // Rows into a stack and back into a parameter.
  const CpuTensor m = random_tensor(5, 7, 98), stack = random_tensor(15, 7, 99);
  CpuTensor s = stack, p = m;
  GpuTensor gs = to_gpu(stack), gp = to_gpu(m);
  CPU::write_rows(s, 5, m);
  CUDA::write_rows(gs, 5, gp);
  CPU::axpy_rows(p, -0.25, stack, 10);
  CUDA::axpy_rows(gp, -0.25, to_gpu(stack), 10);
  CHECK(relative_error(gs, s) == 0.0);
  CHECK(relative_error(gp, p) < kFp32Tolerance);
  CHECK_THROWS_AS(CUDA::write_rows(gs, 11, to_gpu(m)), ablate::invalid_input);
  GpuTensor unused;
  CHECK_THROWS_AS(CUDA::gram(unused, to_gpu(stack), 4), ablate::invalid_input);
}

TEST_CASE("cuda kernels: lerp, scale_add and transpose match the CPU backend") {
  const CpuTensor a = random_tensor(37, 19, 70), b = random_tensor(37, 19, 71);
  const GpuTensor ga = to_gpu(a), gb = to_gpu(b);
  for (double w : {0.1, 0.5, 0.9, 1.0, -0.3}) {
    CAPTURE(w);
    CpuTensor out;
    GpuTensor gout;
    CPU::lerp(out, a, b, w);
    CUDA::lerp(gout, ga, gb, w);
    CHECK(relative_error(gout, out) < 1e-6);
    // In place on either operand.
    CpuTensor ca = a, cb = b;
    GpuTensor gca = to_gpu(a), gcb = to_gpu(b);
    CPU::lerp_inplace(ca, b, w);
    CUDA::lerp_inplace(gca, gb, w);
    CPU::lerp(cb, a, cb, w);
    CUDA::lerp(gcb, ga, gcb, w);
    CHECK(relative_error(gca, ca) < 1e-6);
    CHECK(relative_error(gcb, cb) < 1e-6);
  }
  GpuTensor exact;
  CUDA::lerp(exact, ga, gb, 1.0);  // w = 1 gives b exactly
  CHECK(relative_error(exact, b) == 0.0);

  CpuTensor y = a;
  GpuTensor gy = to_gpu(a);
  CPU::scale_add(y, 1.5, b, -0.25);
  CUDA::scale_add(gy, 1.5, gb, -0.25);
  CHECK(relative_error(gy, y) < 1e-6);

  for (auto [rows, cols] : {std::tuple{37, 19}, std::tuple{1, 5}, std::tuple{64, 64},
                            std::tuple{1000, 257}, std::tuple{33, 2050}}) {
    CAPTURE(rows);
    CAPTURE(cols);
    const CpuTensor src = random_tensor(rows, cols, 80);
    CpuTensor dst;
    GpuTensor gdst;
    CPU::transpose(dst, src);
    CUDA::transpose(gdst, to_gpu(src));
    CHECK(gdst.rows() == cols);
    CHECK(gdst.cols() == rows);
    CHECK(relative_error(gdst, dst) == 0.0);
  }
}
