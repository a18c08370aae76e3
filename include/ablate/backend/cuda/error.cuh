// CUDA and cuBLASLt failures become exceptions that name the failing call and where it was made.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>

namespace ablate::cuda {

// Thrown for any failing CUDA runtime or cuBLASLt call.
class cuda_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Thrown when a device allocation fails; the message says how much was asked for.
class out_of_memory : public cuda_error {
 public:
  using cuda_error::cuda_error;
};

inline void check(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  std::ostringstream os;
  os << "CUDA error in " << call << " (" << file << ":" << line << "): " << cudaGetErrorName(status)
     << ": " << cudaGetErrorString(status);
  throw cuda_error(os.str());
}

inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  std::ostringstream os;
  os << "cuBLASLt error in " << call << " (" << file << ":" << line
     << "): " << cublasLtGetStatusName(status) << ": " << cublasLtGetStatusString(status);
  throw cuda_error(os.str());
}

// Throws for a failed allocation of `bytes` (for `what`): out_of_memory, saying how much was
// asked for and how much is free, or cuda_error for any other failure.
[[noreturn]] inline void allocation_failed(cudaError_t status, std::size_t bytes, const char* what) {
  (void)cudaGetLastError();  // clear the error so later calls do not report it again
  std::size_t free_bytes = 0, total_bytes = 0;
  (void)cudaMemGetInfo(&free_bytes, &total_bytes);
  std::ostringstream os;
  os << "CUDA out of memory: asked for " << bytes << " bytes (" << (bytes >> 20) << " MiB) for "
     << what << "; " << (free_bytes >> 20) << " MiB free of " << (total_bytes >> 20) << " MiB ("
     << cudaGetErrorString(status) << ")";
  if (status == cudaErrorMemoryAllocation) throw out_of_memory(os.str());
  throw cuda_error(os.str());
}

// Checks the launch of the kernel just issued (bad configuration, missing kernel image).
inline void check_launch(const char* kernel, const char* file, int line) {
  check(cudaGetLastError(), kernel, file, line);
}

}  // namespace ablate::cuda

#define ABLATE_CUDA_CHECK(call) ::ablate::cuda::check((call), #call, __FILE__, __LINE__)
#define ABLATE_CUDA_CHECK_LAUNCH(kernel) ::ablate::cuda::check_launch(kernel, __FILE__, __LINE__)
