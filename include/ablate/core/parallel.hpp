// Loop parallelism for the CPU backend: OpenMP when the user compiles with it, a plain loop
// otherwise (no unknown-pragma warnings either way).
#pragma once

#include <exception>
#include <mutex>
#include <utility>

#if defined(_OPENMP)
#include <omp.h>
#define ABLATE_PARALLEL_FOR _Pragma("omp parallel for schedule(static)")
#else
#define ABLATE_PARALLEL_FOR
#endif

namespace ablate {

// An exception may not leave an OpenMP parallel region (the program would terminate).  A loop
// body that can throw (its scratch memory, or an Eigen product's, may not be there) runs
// through run(), which keeps the first exception; rethrow() after the loop throws it on the
// calling thread.
class ParallelErrors {
 public:
  template <class F>
  void run(F&& body) noexcept {
    try {
      std::forward<F>(body)();
    } catch (...) {
      const std::lock_guard<std::mutex> lock(mutex_);
      if (!first_) first_ = std::current_exception();
    }
  }
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  std::mutex mutex_;
  std::exception_ptr first_;
};

}  // namespace ablate
