// The CPU backend: Eigen tensors and the kernel sets every block calls through `Backend::`.
// A backend is a policy type; a CUDA backend provides the same names over device tensors.
#pragma once

#include <cstddef>

#include "ablate/backend/cpu/activation.hpp"
#include "ablate/backend/cpu/attention.hpp"
#include "ablate/backend/cpu/cross_entropy.hpp"
#include "ablate/backend/cpu/dropout.hpp"
#include "ablate/backend/cpu/embedding.hpp"
#include "ablate/backend/cpu/linear.hpp"
#include "ablate/backend/cpu/moe.hpp"
#include "ablate/backend/cpu/norm.hpp"
#include "ablate/backend/cpu/optimizer.hpp"
#include "ablate/backend/cpu/rope.hpp"
#include "ablate/backend/cpu/tensor.hpp"

namespace ablate {

// Scalar is float for training and double for finite-difference gradient checks.
template <class S = float>
struct CPUBackend : cpu::TensorKernels<S>,
                    cpu::LinearKernels<S>,
                    cpu::EmbeddingKernels<S>,
                    cpu::NormKernels<S>,
                    cpu::ActivationKernels<S>,
                    cpu::DropoutKernels<S>,
                    cpu::RopeKernels<S>,
                    cpu::AttentionKernels<S>,
                    cpu::CrossEntropyKernels<S>,
                    cpu::OptimizerKernels<S>,
                    cpu::MoEKernels<S> {
  using Scalar = S;
  using Tensor = cpu::Matrix<S>;
  static constexpr const char* name = "cpu";
  static constexpr bool host_memory = true;  // Tensor::data() is host memory
  // The head dims a model's attention will ask for: the CPU kernels take any.
  static void check_attention_heads(std::ptrdiff_t, std::ptrdiff_t, std::ptrdiff_t, const char*) {}
  // Work is done when a kernel returns: nothing to wait for.
  static void synchronize() {}
};

using CPU = CPUBackend<float>;

}  // namespace ablate
