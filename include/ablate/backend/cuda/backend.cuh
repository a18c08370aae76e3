// The CUDA backend: fp32 device tensors, bf16 cuBLASLt GEMMs with fp32 accumulation, and fused
// kernels, behind the same static names as the CPU backend, so Model<Arch, CUDA> trains every
// architecture Model<Arch, CPU> does.  Compile the including file with nvcc.
#pragma once

#include "ablate/backend/cuda/activation.cuh"
#include "ablate/backend/cuda/attention.cuh"
#include "ablate/backend/cuda/cross_entropy.cuh"
#include "ablate/backend/cuda/dropout.cuh"
#include "ablate/backend/cuda/embedding.cuh"
#include "ablate/backend/cuda/linear.cuh"
#include "ablate/backend/cuda/moe.cuh"
#include "ablate/backend/cuda/norm.cuh"
#include "ablate/backend/cuda/optimizer.cuh"
#include "ablate/backend/cuda/rope.cuh"
#include "ablate/backend/cuda/tensor.cuh"

namespace ablate {

struct CUDABackend : cuda::TensorKernels,
                     cuda::LinearKernels,
                     cuda::EmbeddingKernels,
                     cuda::NormKernels,
                     cuda::ActivationKernels,
                     cuda::DropoutKernels,
                     cuda::RopeKernels,
                     cuda::AttentionKernels,
                     cuda::CrossEntropyKernels,
                     cuda::OptimizerKernels,
                     cuda::MoEKernels {
  using Scalar = float;
  using Tensor = cuda::Tensor;
  static constexpr const char* name = "cuda";
  static constexpr bool host_memory = false;  // Tensor::data() is device memory
  // The head dims a model's attention will ask for, checked when the model is built rather
  // than at its first step.
  static void check_attention_heads(std::ptrdiff_t qk_dim, std::ptrdiff_t v_dim,
                                    std::ptrdiff_t rope_dim, const char* what) {
    check_head_dims(qk_dim, v_dim, what);
    check_rope_dim(rope_dim, what);
  }
  // Waits until the queued GPU work is done (wall-clock timing of a step).
  static void synchronize() { cuda::Runtime::get().synchronize(); }
};

using CUDA = CUDABackend;

}  // namespace ablate
