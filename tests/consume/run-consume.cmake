# Driver of the consume tests: builds tests/consume/consumer.cpp against ablate in one of three
# ways and runs it.  Called by CTest as
#
#   cmake -DMODE=<add_subdirectory|find_package|plain_include> -DABLATE_SOURCE_DIR=<dir>
#         -DWORK_DIR=<dir> -DCXX_COMPILER=<c++> -DGENERATOR=<generator> [-DMAKE_PROGRAM=<make>]
#         [-DEigen3_DIR=<dir>] [-DEIGEN_INCLUDE_DIRS=<dir>|<dir>...] [-DUSE_OPENMP=ON|OFF]
#         -P run-consume.cmake
#
# WORK_DIR is wiped first, so every run is a clean configure, build and (for find_package) a
# clean install.  The consumer is compiled with -O0: it checks that ablate builds and links the
# way users consume it, and unoptimised template code compiles fastest.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS MODE ABLATE_SOURCE_DIR WORK_DIR CXX_COMPILER GENERATOR)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "run-consume.cmake: -D${var}=... is required")
  endif()
endforeach()
if(NOT DEFINED USE_OPENMP)
  set(USE_OPENMP ON)
endif()

set(consume_dir "${ABLATE_SOURCE_DIR}/tests/consume")
set(consumer_source "${consume_dir}/consumer.cpp")

# Runs one command; stops the test with its exit status when it fails.
function(step description)
  message(STATUS "consume ${MODE}: ${description}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result COMMAND_ECHO STDOUT)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consume ${MODE}: '${description}' failed (${result})")
  endif()
endfunction()

# Arguments shared by every nested configure: same compiler, generator and Eigen as the outer
# build, -O0, and no package registries so only what the test installs can be found.
set(configure_args
  -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  "-DCMAKE_BUILD_TYPE="
  "-DCMAKE_CXX_FLAGS=-O0"
  "-DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF"
  "-DCMAKE_FIND_USE_SYSTEM_PACKAGE_REGISTRY=OFF"
  "-DABLATE_USE_OPENMP=${USE_OPENMP}")
if(MAKE_PROGRAM)
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(Eigen3_DIR)
  list(APPEND configure_args "-DEigen3_DIR=${Eigen3_DIR}")
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

if(MODE STREQUAL "add_subdirectory")
  step("configure consumer (add_subdirectory)"
    "${CMAKE_COMMAND}" -S "${consume_dir}/add_subdirectory" -B "${WORK_DIR}/build"
    ${configure_args} "-DABLATE_SOURCE_DIR=${ABLATE_SOURCE_DIR}")
  step("build consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
  step("run consumer" "${WORK_DIR}/build/consumer")

elseif(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  step("configure ablate"
    "${CMAKE_COMMAND}" -S "${ABLATE_SOURCE_DIR}" -B "${WORK_DIR}/ablate-build"
    ${configure_args}
    "-DCMAKE_INSTALL_PREFIX=${prefix}"
    -DABLATE_BUILD_TESTS=OFF -DABLATE_BUILD_BENCHMARKS=OFF -DABLATE_BUILD_EXAMPLES=OFF
    -DABLATE_INSTALL=ON)
  step("build ablate" "${CMAKE_COMMAND}" --build "${WORK_DIR}/ablate-build")
  step("install ablate" "${CMAKE_COMMAND}" --install "${WORK_DIR}/ablate-build")
  step("configure consumer (find_package)"
    "${CMAKE_COMMAND}" -S "${consume_dir}/find_package" -B "${WORK_DIR}/build"
    ${configure_args}
    "-DCMAKE_PREFIX_PATH=${prefix}"
    "-DABLATE_EXPECTED_PREFIX=${prefix}")
  step("build consumer" "${CMAKE_COMMAND}" --build "${WORK_DIR}/build")
  step("run consumer" "${WORK_DIR}/build/consumer")

elseif(MODE STREQUAL "plain_include")
  set(include_flags "-I${ABLATE_SOURCE_DIR}/include")
  if(EIGEN_INCLUDE_DIRS)
    string(REPLACE "|" ";" eigen_dirs "${EIGEN_INCLUDE_DIRS}")
    foreach(dir IN LISTS eigen_dirs)
      list(APPEND include_flags "-I${dir}")
    endforeach()
  endif()
  step("compile consumer (plain -I)"
    "${CXX_COMPILER}" -std=c++20 -O0 ${include_flags}
    "${consumer_source}" -o "${WORK_DIR}/consumer")
  step("run consumer" "${WORK_DIR}/consumer")

else()
  message(FATAL_ERROR "run-consume.cmake: unknown MODE '${MODE}'")
endif()

message(STATUS "consume ${MODE}: OK")
