// ABLATE_HOST_DEVICE marks small pure functions (random numbers, index maths) that CUDA kernels
// call too; under a plain C++ compiler it expands to nothing.
#pragma once

#if defined(__CUDACC__)
#define ABLATE_HOST_DEVICE __host__ __device__
#else
#define ABLATE_HOST_DEVICE
#endif
