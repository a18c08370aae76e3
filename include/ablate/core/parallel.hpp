// Loop parallelism for the CPU backend: OpenMP when the user compiles with it, a plain loop
// otherwise (no unknown-pragma warnings either way).
#pragma once

#if defined(_OPENMP)
#include <omp.h>
#define ABLATE_PARALLEL_FOR _Pragma("omp parallel for schedule(static)")
#else
#define ABLATE_PARALLEL_FOR
#endif
