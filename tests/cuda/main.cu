// The CUDA test runner.  Without a CUDA device every test would fail for the same reason, so it
// prints one SKIPPED line (with the runtime's reason) and exits with 77, which CTest reports as
// skipped; with ABLATE_REQUIRE_GPU set (the GPU machine's check script sets it) that is a
// failure instead, so a driver problem cannot pass as a skipped suite.  Listing the test cases
// (what CTest's test discovery does at build time) needs no device.
#define DOCTEST_CONFIG_IMPLEMENT
#include "../doctest_runner.hpp"

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "ablate/backend/cuda/device.cuh"

int main(int argc, char** argv) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) listing = listing || std::string_view(argv[i]).starts_with("--list");
  if (!listing && ablate::cuda::device_count() == 0) {
    int n = 0;
    const cudaError_t status = cudaGetDeviceCount(&n);
    const char* reason = status == cudaSuccess ? "no devices" : cudaGetErrorName(status);
    const char* required = std::getenv("ABLATE_REQUIRE_GPU");
    if (required != nullptr && *required != '\0') {
      std::printf("FAILED: ABLATE_REQUIRE_GPU is set but no CUDA device is usable (%s)\n", reason);
      return 1;
    }
    std::printf("SKIPPED: no CUDA device (%s; the CUDA tests compiled, they run where a GPU is)\n",
                reason);
    return 77;
  }
  return ablate_test::run_tests(argc, argv);
}
