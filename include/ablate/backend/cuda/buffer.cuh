// Device memory owned by one object.  Capacity only grows, so a block that calls resize() with
// the same shape every step allocates once; allocations are stream-ordered (cudaMallocAsync),
// so freeing never stalls the host.  Host to device copies: copy_to_device waits for the
// stream, upload goes through pinned memory and does not.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
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
  if (p == nullptr) return;
  if (runtime_destroyed()) {
    (void)cudaFree(p);  // at exit, after the runtime and its stream
    return;
  }
  (void)cudaFreeAsync(p, stream());
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

// Pinned host memory for one upload slot: a ring of kDepth buffers, each with the event of its
// last copy, so a slot used several times per step (once per MoE layer) waits only for the copy
// kDepth uses ago.
class PinnedStage {
 public:
  static constexpr int kDepth = 8;

  PinnedStage() = default;
  PinnedStage(const PinnedStage&) = delete;
  PinnedStage& operator=(const PinnedStage&) = delete;
  ~PinnedStage() {
    for (Entry& e : ring_) {
      if (e.event != nullptr) (void)cudaEventDestroy(e.event);
      if (e.data != nullptr) (void)cudaFreeHost(e.data);
    }
  }

  // The next buffer of the ring, with room for `bytes`, once its previous copy is done (an
  // event never recorded counts as done).  record() marks the copy just queued from it.
  void* acquire(std::size_t bytes) {
    current_ = (current_ + 1) % kDepth;
    Entry& e = ring_[current_];
    if (e.event == nullptr)
      ABLATE_CUDA_CHECK(cudaEventCreateWithFlags(&e.event, cudaEventDisableTiming));
    ABLATE_CUDA_CHECK(cudaEventSynchronize(e.event));
    if (bytes > e.capacity) {
      if (e.data != nullptr) ABLATE_CUDA_CHECK(cudaFreeHost(e.data));
      e.data = nullptr;
      e.capacity = 0;
      const cudaError_t status = cudaMallocHost(&e.data, bytes);
      if (status != cudaSuccess) allocation_failed(status, bytes, "a pinned upload buffer");
      e.capacity = bytes;
    }
    return e.data;
  }
  void record() { ABLATE_CUDA_CHECK(cudaEventRecord(ring_[current_].event, stream())); }

 private:
  struct Entry {
    void* data = nullptr;
    std::size_t capacity = 0;
    cudaEvent_t event = nullptr;
  };
  Entry ring_[kDepth];
  int current_ = kDepth - 1;
};

// Copies n host elements to the device without waiting for the stream, unlike copy_to_device:
// through the pinned ring of upload slot `Slot`, which waits only for the copy made from the
// same buffer kDepth uploads ago (normally long done).  For the per-step inputs the host
// produces (token ids, targets, an embedding-gradient plan, bias updates), so the step's work
// keeps queueing on the stream.
template <class T, int Slot>
void upload(T* dst, const T* src, std::size_t n) {
  if (n == 0) return;
  (void)Runtime::get();  // constructed before `stage`, so destroyed after it
  static PinnedStage stage;
  void* host = stage.acquire(n * sizeof(T));
  std::memcpy(host, src, n * sizeof(T));
  ABLATE_CUDA_CHECK(cudaMemcpyAsync(dst, host, n * sizeof(T), cudaMemcpyHostToDevice, stream()));
  stage.record();
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
