// The process-wide CUDA state every kernel set shares: one stream (all work is ordered on it,
// so buffers can be reused between calls without events), the cuBLASLt handle and its
// workspace.  Created on first use on the current device.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

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

// True once the Runtime has been destroyed (at exit): memory that outlives it (a static tensor
// of the program's own) is then freed without it.  A trivially destructible static, so it can
// be read at any point of the exit sequence.
inline bool& runtime_destroyed() {
  static bool destroyed = false;
  return destroyed;
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
    // Tensors are allocated stream-ordered (cudaMallocAsync).  By default the pool hands its
    // memory back to the driver at every synchronisation (each loss read-back), and the next
    // step maps it again; keeping it makes steady-state steps allocation-free, as a caching
    // allocator would.
    cudaMemPool_t pool = nullptr;
    ABLATE_CUDA_CHECK(cudaDeviceGetDefaultMemPool(&pool, device));
    std::uint64_t keep_all = UINT64_MAX;
    ABLATE_CUDA_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep_all));
    ABLATE_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    // No destructor runs for a constructor that throws: each failure undoes what came before.
    const cublasStatus_t lt_status = cublasLtCreate(&lt_);
    if (lt_status != CUBLAS_STATUS_SUCCESS) {
      (void)cudaStreamDestroy(stream_);
      check(lt_status, "cublasLtCreate(&lt_)", __FILE__, __LINE__);
    }
    const cudaError_t status = cudaMalloc(&workspace_, kWorkspaceBytes);
    if (status != cudaSuccess) {
      (void)cublasLtDestroy(lt_);
      (void)cudaStreamDestroy(stream_);
      allocation_failed(status, kWorkspaceBytes, "the cuBLASLt workspace");
    }
  }
  ~Runtime() {
    // Destructors must not throw; at process exit the driver may already be shutting down.
    // A late free (a buffer outliving the runtime) sees runtime_destroyed() and uses cudaFree.
    runtime_destroyed() = true;
    if (workspace_ != nullptr) (void)cudaFree(workspace_);
    if (lt_ != nullptr) (void)cublasLtDestroy(lt_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
    workspace_ = nullptr;
    lt_ = nullptr;
    stream_ = nullptr;
  }

  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
};

inline cudaStream_t stream() { return Runtime::get().stream(); }

}  // namespace ablate::cuda
