#!/bin/sh
# An unfinished experiment whose results.json was edited by hand: a finished run's seed changed
# to one --seeds does not list, or to that of another finished run, must make --resume fail
# with a message that names the run (it would have skipped a run, or counted one twice).
#
#   sh edited-results.sh <out folder> <program> <arg>...
#
# The arguments must train one model for three seeds of 8 batches: --stop-after 20 leaves the
# runs of seeds 0 and 1 finished and that of seed 2 in its checkpoint.
set -u
out=$1
shift
. "$(dirname "$0")/script-log.sh"

"$@" --out "$out" --stop-after 20 >"$log/stdout" 2>"$log/stderr"
rc=$?
[ "$rc" -eq 75 ] || fail "--stop-after 20: exit status $rc, expected 75"
[ "$(grep -c '"seed": ' "$out/results.json")" -eq 2 ] || fail "results.json does not hold two finished runs"
cp "$out/results.json" "$log/results.json"

for edit in "7:, which --seeds does not list" "0: twice"; do
  seed=${edit%%:*}
  expected="has a finished run of seed $seed${edit#*:} (was the file edited?)"
  sed 's/"seed": 1,/"seed": '"$seed"',/' "$log/results.json" >"$out/results.json"
  "$@" --out "$out" --resume >"$log/resume.stdout" 2>"$log/resume.stderr"
  rc=$?
  [ "$rc" -ne 0 ] || fail "--resume with the run of seed 1 edited to seed $seed: exit status 0"
  grep -qF "$expected" "$log/resume.stderr" || fail "stderr does not say: ... $expected"
done
rm -rf "$log"
echo "--resume refused a results.json whose finished runs' seeds were edited"
