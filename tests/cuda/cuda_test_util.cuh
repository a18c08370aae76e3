// Shared helpers of the CUDA tests: moving tensors between the CPU and CUDA backends and
// comparing them.  Every CUDA kernel is checked against the CPU backend's result on the same
// inputs.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "ablate/backend/cpu/backend.hpp"
#include "ablate/backend/cuda/backend.cuh"

namespace cuda_test {

using CpuTensor = ablate::CPU::Tensor;
using GpuTensor = ablate::CUDA::Tensor;

inline GpuTensor to_gpu(const CpuTensor& t) {
  GpuTensor g(t.rows(), t.cols());
  ablate::cuda::copy_to_device(g.data(), t.data(), static_cast<std::size_t>(t.size()));
  return g;
}

inline CpuTensor to_cpu(const GpuTensor& g) {
  CpuTensor t(g.rows(), g.cols());
  ablate::cuda::copy_to_host(t.data(), g.data(), static_cast<std::size_t>(g.size()));
  return t;
}

// A [rows, cols] tensor of normal(0, stddev) values from the counter-based stream `key`.
inline CpuTensor random_tensor(std::ptrdiff_t rows, std::ptrdiff_t cols, std::uint64_t key,
                               double stddev = 1.0) {
  CpuTensor t(rows, cols);
  ablate::CPU::fill_normal(t, key, stddev);
  return t;
}

// ||a - b|| / max(||b||, tiny): the norm-relative error every comparison uses.
inline double relative_error(const CpuTensor& a, const CpuTensor& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double diff = (a - b).template cast<double>().norm();
  const double ref = b.template cast<double>().norm();
  return diff / std::max(ref, 1e-30);
}
inline double relative_error(const GpuTensor& a, const CpuTensor& b) {
  return relative_error(to_cpu(a), b);
}

// Tolerances.  bf16 keeps 8 significant bits (relative rounding 2^-9 = 0.2%); a GEMM's error
// over K terms grows like sqrt(K) times that but averages out in the norm, so 1e-2 bounds a
// GEMM-based result; element-wise fp32 kernels agree to float rounding.
constexpr double kBf16Tolerance = 1e-2;
constexpr double kFp32Tolerance = 1e-5;

}  // namespace cuda_test
