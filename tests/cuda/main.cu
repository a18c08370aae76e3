// The CUDA test runner.  Without a CUDA device every test would fail for the same reason, so it
// prints one SKIPPED line and exits with 77, which CTest reports as skipped.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdio>

#include "ablate/backend/cuda/device.cuh"

int main(int argc, char** argv) {
  if (ablate::cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device (the CUDA tests compiled; they run where a GPU is)\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
