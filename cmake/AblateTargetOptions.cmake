# Compile options for the project's own targets (tests, benchmarks, examples).  None of them is
# ever put on the header-only interface target `ablate`, so consumers see only what they ask for.
#
#   ablate_set_warnings(<target>)     -Wall -Wextra -Werror (dependencies come in as SYSTEM
#                                     includes, so only ablate's own code is held to it)
#   ablate_native(<target>)           -march=native when ABLATE_NATIVE is ON
#   ablate_target_defaults(<target>)  both of the above
#
# The sanitizer flags of ABLATE_SANITIZE are set for the whole directory tree in the top-level
# CMakeLists.txt, so they reach every project target without a call.

function(ablate_set_warnings target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Werror>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Werror --Werror=all-warnings>)
endfunction()

function(ablate_native target)
  if(ABLATE_NATIVE)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
    # On AVX-512 hosts, GCC < 13 warns about its own intrinsic headers once they are inlined
    # into Eigen's kernels (GCC PR 105593: `__m256d __Y = __Y;` in _mm256_undefined_pd), and the
    # system-header exemption misses it.  The non-native build (cmake/run-tests.sh --sanitize)
    # keeps these warnings on for our own code.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
      target_compile_options(${target} PRIVATE
        $<$<COMPILE_LANGUAGE:CXX>:-Wno-uninitialized -Wno-maybe-uninitialized>)
    endif()
  endif()
endfunction()

function(ablate_target_defaults target)
  ablate_set_warnings(${target})
  ablate_native(${target})
endfunction()
