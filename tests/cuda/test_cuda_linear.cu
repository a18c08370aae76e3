// Tensor basics and the cuBLASLt linear layer against the CPU backend.
#include "../elementwise_shape_checks.hpp"
#include "cuda_test_util.cuh"

using namespace cuda_test;
using ablate::CPU;
using ablate::CUDA;

TEST_CASE("cuda: tensor element-wise basics match the CPU backend") {
  const CpuTensor x = random_tensor(37, 19, 1), y = random_tensor(37, 19, 2);
  CpuTensor c = y;
  GpuTensor g = to_gpu(y);
  const GpuTensor gx = to_gpu(x);
  CPU::axpy(c, 0.5, x);
  CUDA::axpy(g, 0.5, gx);
  CPU::add_inplace(c, x);
  CUDA::add_inplace(g, gx);
  CPU::scale_inplace(c, -1.5);
  CUDA::scale_inplace(g, -1.5);
  CHECK(relative_error(g, c) < kFp32Tolerance);

  CpuTensor s;
  GpuTensor gs;
  CPU::slice_columns(s, x, 3, 7);
  CUDA::slice_columns(gs, gx, 3, 7);
  CHECK(relative_error(gs, s) < kFp32Tolerance);
  CPU::write_columns(c, 11, s);
  CUDA::write_columns(g, 11, gs);
  CPU::add_columns(c, 2, s);
  CUDA::add_columns(g, 2, gs);
  CHECK(relative_error(g, c) < kFp32Tolerance);

  CHECK(CUDA::sum_squares(gx) == doctest::Approx(CPU::sum_squares(x)).epsilon(1e-6));
  // Several tensors in one reduction (an empty one among them), and the Frobenius
  // normalisation, whose norm stays on the device: the sum of the per-tensor sums, as the CPU.
  const GpuTensor gempty(0, 5);
  CHECK(CUDA::sum_squares_all({&gx, &gempty, &gs, &gx}) ==
        doctest::Approx(CPU::sum_squares_all({&x, &x, &s})).epsilon(1e-6));
  CHECK(CUDA::sum_squares_all({}) == 0.0);
  CpuTensor unit = c;
  GpuTensor gunit = g;
  CPU::normalize_frobenius(unit, 1e-7);
  CUDA::normalize_frobenius(gunit, 1e-7);
  CHECK(relative_error(gunit, unit) < kFp32Tolerance);
  CHECK(CUDA::sum_squares(gunit) == doctest::Approx(1.0).epsilon(1e-5));
  // The same counter-based streams on both backends.
  CpuTensor n(64, 33), u(64, 33);
  GpuTensor gn(64, 33), gu(64, 33);
  CPU::fill_normal(n, 42, 0.02);
  CUDA::fill_normal(gn, 42, 0.02);
  CPU::fill_uniform(u, 43, 0.1);
  CUDA::fill_uniform(gu, 43, 0.1);
  CHECK(relative_error(gn, n) < 1e-6);
  CHECK(relative_error(gu, u) < 1e-6);
  const std::vector<double> host = CUDA::to_host(gu);
  CHECK(host.size() == static_cast<std::size_t>(u.size()));
  CHECK(host[5] == doctest::Approx(u.data()[5]));
}

TEST_CASE("cuda: linear forward/backward and GEMMs match the CPU backend within bf16") {
  // One aligned shape (cuBLASLt) and one odd shape (the tiled fallback or an unaligned algo).
  for (auto [n, in, out] : {std::tuple{256, 128, 192}, std::tuple{37, 13, 21}}) {
    CAPTURE(n);
    CAPTURE(in);
    CAPTURE(out);
    const CpuTensor x = random_tensor(n, in, 10), w = random_tensor(out, in, 11, 0.1),
                    b = random_tensor(1, out, 12), dy = random_tensor(n, out, 13);
    CpuTensor y, dx, dw = CpuTensor::Zero(out, in), db = CpuTensor::Zero(1, out);
    CPU::linear_forward(y, x, w, &b);
    CPU::linear_backward(&dx, dw, &db, dy, x, w);
    CPU::linear_backward(&dx, dw, &db, dy, x, w, /*accumulate_dx=*/true);

    const GpuTensor gx = to_gpu(x), gw = to_gpu(w), gb = to_gpu(b), gdy = to_gpu(dy);
    GpuTensor gy, gdx, gdw = to_gpu(CpuTensor::Zero(out, in)), gdb = to_gpu(CpuTensor::Zero(1, out));
    CUDA::linear_forward(gy, gx, gw, &gb);
    CUDA::linear_backward(&gdx, gdw, &gdb, gdy, gx, gw);
    CUDA::linear_backward(&gdx, gdw, &gdb, gdy, gx, gw, true);
    CHECK(relative_error(gy, y) < kBf16Tolerance);
    CHECK(relative_error(gdx, dx) < kBf16Tolerance);
    CHECK(relative_error(gdw, dw) < kBf16Tolerance);
    CHECK(relative_error(gdb, db) < kFp32Tolerance);

    CpuTensor m, gram;
    GpuTensor gm, ggram;
    CPU::matmul(m, x, w.transpose().eval());
    CUDA::matmul(gm, gx, to_gpu(w.transpose().eval()));
    CPU::gram(gram, x);
    CUDA::gram(ggram, gx);
    CHECK(relative_error(gm, m) < kBf16Tolerance);
    CHECK(relative_error(ggram, gram) < kBf16Tolerance);
    // d = alpha a b + beta c: the combination in the GEMM's epilogue, c a separate tensor.
    const CpuTensor c = random_tensor(n, out, 14);
    CpuTensor d;
    GpuTensor gd;
    CPU::matmul_add(d, x, w.transpose().eval(), 0.5, c, -2.0);
    CUDA::matmul_add(gd, gx, to_gpu(w.transpose().eval()), 0.5, to_gpu(c), -2.0);
    CHECK(relative_error(gd, d) < kBf16Tolerance);
  }
}

TEST_CASE("cuda: GEMMs on views that start mid-allocation, and with an empty inner dimension") {
  // The same shape on 256-byte aligned operands, then on operands one element into their
  // buffers: the second must not reuse the first's algorithm (cuBLASLt's may need 16-byte
  // aligned rows); it gets one planned for its alignment or the tiled fallback.
  using ablate::cuda::DeviceBuffer;
  using ablate::cuda::Gemm;
  constexpr std::ptrdiff_t m = 64, n = 96, k = 128;
  const CpuTensor a = random_tensor(m, k, 20), b = random_tensor(k, n, 21);
  CpuTensor c;
  CPU::matmul(c, a, b);
  const GpuTensor ga = to_gpu(a), gb = to_gpu(b);
  DeviceBuffer<__nv_bfloat16> a16(m * k + 1), b16(k * n + 1);
  GpuTensor out(1, m * n + 1);
  for (std::ptrdiff_t offset : {0, 1}) {
    CAPTURE(offset);
    Gemm::convert(a16.data() + offset, ga.data(), m * k);
    Gemm::convert(b16.data() + offset, gb.data(), k * n);
    Gemm::get().run_bf16(out.data() + offset, a16.data() + offset, false, b16.data() + offset,
                         false, m, n, k, 1.f, 0.f, nullptr);
    CpuTensor got(m, n);
    ablate::cuda::copy_to_host(got.data(), out.data() + offset, static_cast<std::size_t>(m * n));
    CHECK(relative_error(got, c) < kBf16Tolerance);
  }

  // in_features 0: no products, y is the bias broadcast, dx is empty and db the column sums.
  const CpuTensor x(5, 0), w(3, 0), bias = random_tensor(1, 3, 22), dy = random_tensor(5, 3, 23);
  CpuTensor y, dx, dw(3, 0), db = CpuTensor::Zero(1, 3);
  CPU::linear_forward(y, x, w, &bias);
  CPU::linear_backward(&dx, dw, &db, dy, x, w);
  const GpuTensor gx = to_gpu(x), gw = to_gpu(w), gbias = to_gpu(bias), gdy = to_gpu(dy);
  GpuTensor gy, gdx, gdw = to_gpu(dw), gdb = to_gpu(CpuTensor::Zero(1, 3));
  CUDA::linear_forward(gy, gx, gw, &gbias);
  CUDA::linear_backward(&gdx, gdw, &gdb, gdy, gx, gw);
  CHECK(relative_error(gy, y) < kFp32Tolerance);
  CHECK(relative_error(gdb, db) < kFp32Tolerance);
  CHECK(gdx.rows() == 5);
  CHECK(gdx.cols() == 0);
}

TEST_CASE("cuda: the tiled fallback GEMM matches the CPU, batched and transposed") {
  // Launched directly: cuBLASLt takes most shapes, so the fallback would otherwise run only
  // where the heuristic finds nothing.  Stacks of 3; every transpose combination; c_in and
  // beta, and the bias of an unbatched call.
  using ablate::cuda::DeviceBuffer;
  using ablate::cuda::Gemm;
  namespace k = ablate::cuda::kernels;
  constexpr std::ptrdiff_t m = 37, n = 21, kk = 19, batch = 3;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) {
      CAPTURE(ta);
      CAPTURE(tb);
      // a: batch x [m, k] (stored [k, m] when ta), b: batch x [k, n] ([n, k] when tb).
      const CpuTensor a = random_tensor(batch * (ta ? kk : m), ta ? m : kk, 30),
                      b = random_tensor(batch * (tb ? n : kk), tb ? kk : n, 31),
                      c_in = random_tensor(batch * m, n, 32), bias = random_tensor(1, n, 33);
      CpuTensor expected(batch * m, n);
      for (std::ptrdiff_t z = 0; z < batch; ++z) {
        const CpuTensor az = a.middleRows(z * (ta ? kk : m), ta ? kk : m);
        const CpuTensor bz = b.middleRows(z * (tb ? n : kk), tb ? kk : n);
        const CpuTensor opa = ta ? CpuTensor(az.transpose()) : az, opb = tb ? CpuTensor(bz.transpose()) : bz;
        expected.middleRows(z * m, m) = 0.5f * (opa * opb) - 2.0f * c_in.middleRows(z * m, m);
      }
      const GpuTensor ga = to_gpu(a), gb = to_gpu(b), gc_in = to_gpu(c_in), gbias = to_gpu(bias);
      DeviceBuffer<__nv_bfloat16> a16(static_cast<std::size_t>(a.size())), b16(static_cast<std::size_t>(b.size()));
      Gemm::convert(a16.data(), ga.data(), static_cast<std::size_t>(a.size()));
      Gemm::convert(b16.data(), gb.data(), static_cast<std::size_t>(b.size()));
      GpuTensor out(batch * m, n);
      const dim3 block(k::kGemmTile, k::kGemmTile);
      const dim3 grid((n + k::kGemmTile - 1) / k::kGemmTile, (m + k::kGemmTile - 1) / k::kGemmTile, 2);
      // grid.z = 2 < batch: the kernel's batch loop takes the third matrix.
      k::gemm_tiled<<<grid, block, 0, ablate::cuda::stream()>>>(out.data(), a16.data(), b16.data(),
                                                               m, n, kk, ta, tb, 0.5f, -2.0f,
                                                               nullptr, gc_in.data(), batch);
      ABLATE_CUDA_CHECK_LAUNCH("gemm_tiled");
      CHECK(relative_error(out, expected) < kBf16Tolerance);

      // Unbatched with a bias, c = op(a) op(b) + bias: the first matrices of the stacks.
      CpuTensor with_bias;
      {
        const CpuTensor az = a.topRows(ta ? kk : m), bz = b.topRows(tb ? n : kk);
        const CpuTensor opa = ta ? CpuTensor(az.transpose()) : az, opb = tb ? CpuTensor(bz.transpose()) : bz;
        with_bias = opa * opb;
        with_bias.rowwise() += bias.row(0);
      }
      GpuTensor out1(m, n);
      k::gemm_tiled<<<grid, block, 0, ablate::cuda::stream()>>>(out1.data(), a16.data(), b16.data(),
                                                               m, n, kk, ta, tb, 1.f, 0.f,
                                                               gbias.data(), out1.data(), 1);
      ABLATE_CUDA_CHECK_LAUNCH("gemm_tiled");
      CHECK(relative_error(out1, with_bias) < kBf16Tolerance);

      // The same through Gemm with the bias a view 4 bytes into a tensor: not 16-byte aligned
      // for the bias epilogue, so it takes the tiled kernel, and no plan is made for it.
      CpuTensor shifted(1, n + 1);
      shifted(0, 0) = 1e6f;
      shifted.rightCols(n) = bias;
      const GpuTensor gshifted = to_gpu(shifted);
      GpuTensor out2(m, n);
      const std::size_t plans_before = Gemm::get().plans();
      Gemm::get().run_bf16(out2.data(), a16.data(), ta, b16.data(), tb, m, n, kk, 1.f, 0.f,
                           gshifted.data() + 1);
      CHECK(Gemm::get().plans() == plans_before);
      CHECK(relative_error(out2, with_bias) < kBf16Tolerance);
    }
  }
}

TEST_CASE("cuda: linear and norm kernels reject operands of the wrong shape before any launch") {
  const GpuTensor x = to_gpu(random_tensor(6, 4, 1)), w = to_gpu(random_tensor(3, 4, 2));
  GpuTensor y, dx, dw = to_gpu(CpuTensor::Zero(3, 4)), rstd;
  CHECK_THROWS_WITH_AS(CUDA::linear_forward(y, to_gpu(random_tensor(6, 5, 3)), w, nullptr),
                       doctest::Contains("x is [6, 5] but the weight is [3, 4]"),
                       ablate::invalid_input);
  CHECK_THROWS_WITH_AS(CUDA::linear_backward(&dx, dw, nullptr, to_gpu(random_tensor(6, 2, 4)), x, w),
                       doctest::Contains("dy is [6, 2]"), ablate::invalid_input);
  CHECK_THROWS_WITH_AS(CUDA::rmsnorm_forward(y, rstd, x, to_gpu(random_tensor(1, 3, 5)), 1e-6),
                       doctest::Contains("the weight is [1, 3]"), ablate::invalid_input);
}

TEST_CASE("cuda: element-wise, column and scatter kernels reject operands of the wrong shape") {
  const GpuTensor y = ablate_test::check_elementwise_shape_errors<CUDA>(
      [](std::ptrdiff_t rows, std::ptrdiff_t cols) { return to_gpu(CpuTensor::Zero(rows, cols)); },
      [](const std::vector<std::int32_t>& v) {
        CUDA::Indices g;
        g.from_host(v);
        return g;
      });
  CHECK(to_cpu(y).isZero());
}

TEST_CASE("cuda: errors name the failing call, and out of memory says how much was asked") {
  try {
    ablate::cuda::allocate(std::size_t{1} << 52);  // 4 PiB
    FAIL("allocation of 4 PiB succeeded");
  } catch (const ablate::cuda::cuda_error& e) {
    // out_of_memory where the driver says cudaErrorMemoryAllocation; either way the message
    // says how much was asked for.
    INFO(e.what());
    CHECK(std::string(e.what()).find("asked for 4503599627370496 bytes") != std::string::npos);
    if (dynamic_cast<const ablate::cuda::out_of_memory*>(&e) == nullptr)
      MESSAGE("the driver did not report cudaErrorMemoryAllocation: " << e.what());
  }
  try {
    // An invalid copy direction: an ordinary error, which leaves the context usable (a bad
    // device pointer could be reported as a sticky illegal-address error instead).
    int x = 0;
    ABLATE_CUDA_CHECK(cudaMemcpy(&x, &x, sizeof x, static_cast<cudaMemcpyKind>(42)));
    FAIL("a copy in an invalid direction succeeded");
  } catch (const ablate::cuda::cuda_error& e) {
    CHECK(std::string(e.what()).find("cudaMemcpy") != std::string::npos);
  }
  // The failed copy is also the runtime's "last error": clear it, or the next launch check
  // (cudaGetLastError, in whatever test runs next) would report it as its own failure.
  (void)cudaGetLastError();
}
