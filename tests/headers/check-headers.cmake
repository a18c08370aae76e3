# Compiles every public header of ablate as a translation unit of its own, so that each one
# includes what it uses (as users include them one by one) and compiles warning-free with the
# given compiler.  Called by CTest as
#
#   cmake -DABLATE_SOURCE_DIR=<dir> -DWORK_DIR=<dir> -DCXX_COMPILER=<c++>
#         [-DSYSTEM_INCLUDE_DIRS=<dir>|<dir>...] [-DEXTRA_FLAGS=<flag>|<flag>...]
#         -P check-headers.cmake
#
# SYSTEM_INCLUDE_DIRS: Eigen's and nlohmann-json's; EXTRA_FLAGS: say -fopenmp, so that both
# sides of core/parallel.hpp get compiled by one compiler or the other.
#
# -fsyntax-only: nothing is instantiated that the header does not instantiate itself, so this
# checks the headers, not the templates' bodies (the unit tests compile those).  The CUDA
# headers (.cuh) need nvcc and are compiled by the CUDA tests.
cmake_minimum_required(VERSION 3.25)

foreach(var IN ITEMS ABLATE_SOURCE_DIR WORK_DIR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "check-headers.cmake: -D${var}=... is required")
  endif()
endforeach()

set(flags -std=c++20 -fsyntax-only -Wall -Wextra -Werror "-I${ABLATE_SOURCE_DIR}/include")
if(SYSTEM_INCLUDE_DIRS)
  string(REPLACE "|" ";" system_dirs "${SYSTEM_INCLUDE_DIRS}")
  foreach(dir IN LISTS system_dirs)
    list(APPEND flags -isystem "${dir}")
  endforeach()
endif()
if(EXTRA_FLAGS)
  string(REPLACE "|" ";" extra_flags "${EXTRA_FLAGS}")
  list(APPEND flags ${extra_flags})
endif()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
file(GLOB_RECURSE headers RELATIVE "${ABLATE_SOURCE_DIR}/include"
     "${ABLATE_SOURCE_DIR}/include/ablate/*.hpp")
list(SORT headers)
list(LENGTH headers count)
if(count EQUAL 0)
  message(FATAL_ERROR "check-headers.cmake: no headers under ${ABLATE_SOURCE_DIR}/include")
endif()

set(failed "")
foreach(header IN LISTS headers)
  string(MAKE_C_IDENTIFIER "${header}" name)
  set(source "${WORK_DIR}/${name}.cpp")
  file(WRITE "${source}" "#include <${header}>\n")
  execute_process(COMMAND "${CXX_COMPILER}" ${flags} "${source}"
                  RESULT_VARIABLE result OUTPUT_VARIABLE output ERROR_VARIABLE output)
  if(NOT result EQUAL 0)
    list(APPEND failed "${header}")
    message("${header}: does not compile on its own with ${CXX_COMPILER} ${extra_flags}:\n${output}")
  endif()
endforeach()

if(failed)
  list(LENGTH failed n)
  string(REPLACE ";" ", " failed "${failed}")
  message(FATAL_ERROR "${n} of ${count} headers fail on their own: ${failed}")
endif()
message(STATUS "all ${count} headers compile on their own with ${CXX_COMPILER} ${extra_flags}")
