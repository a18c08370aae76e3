// The backend a run trains on (--backend): ablate::CPU always, ablate::CUDA when the program
// was compiled by nvcc with the CUDA backend (CMake defines ABLATE_EXAMPLES_WITH_CUDA then; see
// examples/CMakeLists.txt).  with_backend() turns the run-time choice into the template
// argument, so the training code is written once for both.
#pragma once

#include <optional>
#include <stdexcept>
#include <string>

#include <ablate/ablate.hpp>

#if defined(ABLATE_EXAMPLES_WITH_CUDA)
#if !defined(__CUDACC__)
#error "ABLATE_EXAMPLES_WITH_CUDA: compile the example programs with nvcc (LANGUAGE CUDA)"
#endif
#include <ablate/backend/cuda/backend.cuh>
#endif

namespace examples {

enum class Backend { cpu, cuda };
inline const char* to_string(Backend b) { return b == Backend::cpu ? "cpu" : "cuda"; }

#if defined(ABLATE_EXAMPLES_WITH_CUDA)
inline constexpr bool kHaveCudaBackend = true;
#else
inline constexpr bool kHaveCudaBackend = false;
#endif

// --backend cuda in a build that has the CUDA backend, on a machine without a CUDA device: the
// programs report it and exit with kNoDeviceExitCode (77, which CTest can count as skipped).
class no_device_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
inline constexpr int kNoDeviceExitCode = 77;

// Checks that `b` can run here: throws no_device_error for CUDA without a device.  Returns
// what results.json records about the device: the GPU's name for CUDA, nothing for the CPU.
inline std::optional<std::string> check_backend(Backend b) {
  if (b == Backend::cpu) return std::nullopt;
#if defined(ABLATE_EXAMPLES_WITH_CUDA)
  if (ablate::cuda::device_count() == 0)
    throw no_device_error(
        "--backend cuda: no CUDA device is available (no GPU, no driver, or CUDA_VISIBLE_DEVICES "
        "hides them); use --backend cpu");
  return std::string(ablate::cuda::Runtime::get().properties().name);
#else
  throw std::logic_error("--backend cuda in a build without the CUDA backend");
#endif
}

// What results.json records of the CUDA attention kernels (ABLATE_CUDA_ATTENTION: auto, fp32 or
// tensor_core), nothing for the CPU: the two kernel sets round differently, so a resumed run
// must keep the choice it started with.
inline std::optional<std::string> attention_kernels(Backend b) {
  if (b == Backend::cpu) return std::nullopt;
#if defined(ABLATE_EXAMPLES_WITH_CUDA)
  return std::string(ablate::cuda::attention_kernel_name(ablate::cuda::attention_kernel()));
#else
  throw std::logic_error("--backend cuda in a build without the CUDA backend");
#endif
}

// f.template operator()<B>() with B the backend type of `b`, e.g.
//   with_backend(b, [&]<class B>() { return train_run<Arch, B>(...); });
template <class F>
decltype(auto) with_backend(Backend b, F&& f) {
  if (b == Backend::cuda) {
#if defined(ABLATE_EXAMPLES_WITH_CUDA)
    return f.template operator()<ablate::CUDA>();
#else
    throw std::logic_error("--backend cuda in a build without the CUDA backend");
#endif
  }
  return f.template operator()<ablate::CPU>();
}

}  // namespace examples
