#!/bin/sh
# Stops an example program with a signal while it trains, as Ctrl-C or a job scheduler would,
# and checks what it leaves:
#
#   sh stop-by-signal.sh <INT|TERM> <exit status> <out folder> <program> <arg>...
#
# The program runs in the background with --out; once it reports its first training batch it
# gets the signal. It must exit with the given status (128 + the signal's number), say which
# batch it stopped after and why, and leave a checkpoint that --resume continues from (checked
# by resuming with --stop-after 2, which must stop again with status 75).
set -u
signal=$1
want=$2
out=$3
shift 3
. "$(dirname "$0")/script-log.sh"

"$@" --out "$out" >"$log/stdout" 2>"$log/stderr" &
pid=$!
# However this script ends, the program does not outlive it.
trap 'kill -KILL "$pid" 2>/dev/null' EXIT
# The handlers are in place once training has begun: wait for the first progress line.
tries=0
until grep -q ': 1/' "$log/stderr" 2>/dev/null; do
  kill -0 "$pid" 2>/dev/null || fail "the program ended before its first training batch"
  tries=$((tries + 1))
  [ "$tries" -lt 1200 ] || fail "no training batch within 120 s"
  sleep 0.1
done
kill -s "$signal" "$pid"
# It stops after the batch in progress: a program that ignored the signal would train on.
tries=0
while kill -0 "$pid" 2>/dev/null; do
  tries=$((tries + 1))
  [ "$tries" -lt 600 ] || fail "still running 60 s after SIG$signal"
  sleep 0.1
done
wait "$pid"
rc=$?
[ "$rc" -eq "$want" ] || fail "SIG$signal: exit status $rc, expected $want"
grep -q "stopped after batch [0-9]* of [0-9]* (SIG$signal)" "$log/stderr" ||
  fail "stderr does not say which batch SIG$signal stopped the run after"
grep -q '"complete": false' "$out/results.json" || fail "no unfinished results.json"
[ -f "$out/checkpoint.safetensors" ] || fail "no checkpoint of the stopped run"
batch=$(sed -n "s/.*stopped after batch \([0-9]*\) of .*/\1/p" "$log/stderr" | head -n 1)

"$@" --out "$out" --resume --stop-after 2 >"$log/resume.stdout" 2>"$log/resume.stderr"
rc=$?
[ "$rc" -eq 75 ] || fail "--resume --stop-after 2: exit status $rc, expected 75"
grep -q "resumed after batch $batch\$" "$log/resume.stderr" ||
  fail "--resume did not continue from the checkpoint of batch $batch"
grep -q "stopped after batch $((batch + 2)) of " "$log/resume.stderr" ||
  fail "--resume --stop-after 2 did not stop 2 batches later"
rm -rf "$log"
echo "SIG$signal stopped the run after batch $batch with status $want; --resume continued from it"
