# The optional CUDA backend target, ablate::cuda (include/ablate/backend/cuda, compiled by nvcc).
#
#   ABLATE_CUDA = AUTO (default)  build it when nvcc and cuBLASLt are found
#               = ON              require them
#               = OFF             never
#
# Sets ABLATE_HAVE_CUDA.  Architectures default to sm_90a (H100/H200, the arch-specific Hopper
# features) plus compute_80 PTX that the driver compiles for any other GPU from Ampere on; pass
# -DCMAKE_CUDA_ARCHITECTURES=... to choose others.
include(CheckLanguage)

set(ABLATE_HAVE_CUDA OFF)
if(NOT ABLATE_CUDA STREQUAL "OFF")
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES AND NOT DEFINED ENV{CUDAARCHS})
      set(CMAKE_CUDA_ARCHITECTURES 90a-real 80-virtual)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit QUIET)
    if(CUDAToolkit_FOUND AND TARGET CUDA::cublasLt AND TARGET CUDA::cudart)
      set(ABLATE_HAVE_CUDA ON)
    endif()
  endif()
  if(ABLATE_CUDA STREQUAL "ON" AND NOT ABLATE_HAVE_CUDA)
    message(FATAL_ERROR "ablate: ABLATE_CUDA=ON but nvcc or cuBLASLt was not found.  Install the "
                        "CUDA toolkit (nvcc, cuBLAS) and put nvcc on PATH or pass "
                        "-DCMAKE_CUDA_COMPILER=<path to nvcc>.")
  endif()
endif()

if(ABLATE_HAVE_CUDA)
  message(STATUS "ablate: CUDA backend on (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, "
                 "architectures ${CMAKE_CUDA_ARCHITECTURES})")
  add_library(ablate_cuda INTERFACE)
  add_library(ablate::cuda ALIAS ablate_cuda)
  set_target_properties(ablate_cuda PROPERTIES EXPORT_NAME cuda)
  target_link_libraries(ablate_cuda INTERFACE ablate CUDA::cudart CUDA::cublasLt)
  # CMake releases older than the toolkit do not know its C++20 flag; spell it out then.
  if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
    target_compile_features(ablate_cuda INTERFACE cuda_std_20)
  else()
    target_compile_options(ablate_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
  endif()
  # Eigen (the CPU backend, often in the same file) stays host-only under nvcc; OpenMP pragmas
  # of the CPU backend reach the host compiler.
  target_compile_definitions(ablate_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:EIGEN_NO_CUDA>)
  if(ABLATE_USE_OPENMP)
    target_compile_options(ablate_cuda INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-fopenmp>)
  endif()
else()
  message(STATUS "ablate: CUDA backend off (ABLATE_CUDA=${ABLATE_CUDA}; nvcc/cuBLASLt not found "
                 "or not asked for)")
endif()
