// The process-wide CUDA state every kernel set shares: one stream (all work is ordered on it,
// so buffers can be reused between calls without events), the cuBLASLt handle and its
// workspace.  Created on first use on the current device.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "ablate/backend/cuda/error.cuh"

namespace ablate::cuda {

// Number of usable CUDA devices; 0 (never an exception) when there is no device or no driver.
inline int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

class Runtime {
 public:
  static Runtime& get() {
    static Runtime runtime;
    return runtime;
  }
  Runtime(const Runtime&) = delete;
  Runtime& operator=(const Runtime&) = delete;

  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t lt() const { return lt_; }
  const cudaDeviceProp& properties() const { return props_; }

  // cuBLASLt workspace: 32 MiB is what cuBLAS itself uses on Hopper.
  static constexpr std::size_t kWorkspaceBytes = 32u << 20;
  void* workspace() const { return workspace_; }

  // Waits for all queued work; surfaces errors of kernels that already ran.
  void synchronize() const { ABLATE_CUDA_CHECK(cudaStreamSynchronize(stream_)); }

 private:
  Runtime() {
    if (device_count() == 0) throw cuda_error("ablate::CUDA: no CUDA device is available");
    int device = 0;
    ABLATE_CUDA_CHECK(cudaGetDevice(&device));
    ABLATE_CUDA_CHECK(cudaGetDeviceProperties(&props_, device));
    ABLATE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ABLATE_CUDA_CHECK(cublasLtCreate(&lt_));
    ABLATE_CUDA_CHECK(cudaMalloc(&workspace_, kWorkspaceBytes));
  }
  ~Runtime() {
    // Destructors must not throw; at process exit the driver may already be shutting down.
    if (workspace_ != nullptr) (void)cudaFree(workspace_);
    if (lt_ != nullptr) (void)cublasLtDestroy(lt_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
};

inline cudaStream_t stream() { return Runtime::get().stream(); }

}  // namespace ablate::cuda
