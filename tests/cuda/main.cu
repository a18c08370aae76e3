// The CUDA test runner.  Without a CUDA device every test would fail for the same reason, so it
// prints one SKIPPED line and exits with 77, which CTest reports as skipped.  Listing the test
// cases (what CTest's test discovery does at build time) needs no device.
#define DOCTEST_CONFIG_IMPLEMENT
#include "../doctest_runner.hpp"

#include <cstdio>
#include <string_view>

#include "ablate/backend/cuda/device.cuh"

int main(int argc, char** argv) {
  bool listing = false;
  for (int i = 1; i < argc; ++i) listing = listing || std::string_view(argv[i]).starts_with("--list");
  if (!listing && ablate::cuda::device_count() == 0) {
    std::printf("SKIPPED: no CUDA device (the CUDA tests compiled; they run where a GPU is)\n");
    return 77;
  }
  return ablate_test::run_tests(argc, argv);
}
