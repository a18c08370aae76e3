// Device memory owned by one object.  Capacity only grows, so a block that calls resize() with
// the same shape every step allocates once; allocations are stream-ordered (cudaMallocAsync),
// so freeing never stalls the host.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <utility>

#include "ablate/backend/cuda/device.cuh"
#include "ablate/backend/cuda/error.cuh"

namespace ablate::cuda {

// Allocates `bytes` on the runtime stream; failure says how much was asked for and what is free.
inline void* allocate(std::size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMallocAsync(&p, bytes, stream());
  if (status == cudaSuccess) return p;
  allocation_failed(status, bytes, "a tensor");
}

inline void release(void* p) noexcept {
  if (p != nullptr) (void)cudaFreeAsync(p, stream());
}

template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t n) { reserve(n); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), capacity_(std::exchange(o.capacity_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      release(data_);
      data_ = std::exchange(o.data_, nullptr);
      capacity_ = std::exchange(o.capacity_, 0);
    }
    return *this;
  }
  ~DeviceBuffer() { release(data_); }

  // Makes room for n elements; contents are kept only when no reallocation happens.
  void reserve(std::size_t n) {
    if (n <= capacity_) return;
    T* fresh = static_cast<T*>(allocate(n * sizeof(T)));
    release(data_);
    data_ = fresh;
    capacity_ = n;
  }

  T* data() { return data_; }
  const T* data() const { return data_; }
  std::size_t capacity() const { return capacity_; }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

// Copies n elements of host memory to the device (and back); both wait for completion so the
// host buffer may be reused at once.
template <class T>
void copy_to_device(T* dst, const T* src, std::size_t n) {
  if (n == 0) return;
  ABLATE_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyHostToDevice, stream()));
  ABLATE_CUDA_CHECK(cudaStreamSynchronize(stream()));
}
template <class T>
void copy_to_host(T* dst, const T* src, std::size_t n) {
  if (n == 0) return;
  ABLATE_CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof(T), cudaMemcpyDeviceToHost, stream()));
  ABLATE_CUDA_CHECK(cudaStreamSynchronize(stream()));
}

// Grow-only scratch memory shared by the kernels of one kind: slot `Slot` of element type T.
// Safe to reuse from call to call because all work is ordered on the one stream.
template <class T, int Slot = 0>
T* scratch(std::size_t n) {
  // The runtime is constructed before `buffer`, so it is destroyed after it: the buffer's
  // destructor frees on the runtime's stream.
  (void)Runtime::get();
  static DeviceBuffer<T> buffer;
  buffer.reserve(n);
  return buffer.data();
}

}  // namespace ablate::cuda
