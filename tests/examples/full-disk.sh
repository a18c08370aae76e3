#!/bin/sh
# Runs an example program on a full disk, as a full or over-quota file system would be, and
# checks what it leaves:
#
#   sh full-disk.sh <out folder> <program> <arg>...
#
# The disk is a file-size limit (ulimit -f: 64 KiB, POSIX's 512-byte blocks; dash and bash
# agree in sh mode) between the size of results.json and that of the checkpoint, with SIGXFSZ
# ignored so that a write past it fails with EFBIG.  Stopped by --stop-after 6, the program must
# fail to write its checkpoint with status 1 and a message that names the file and the reason,
# and leave the results.json it wrote before and no temporary file.  The same command line with
# --resume, on a disk with room, must then finish the experiment.
set -u
out=$1
shift
. "$(dirname "$0")/script-log.sh"

(trap '' XFSZ && ulimit -f 128 && exec "$@" --out "$out" --stop-after 6) \
  >"$log/stdout" 2>"$log/stderr"
rc=$?
[ "$rc" -eq 1 ] || fail "on a full disk: exit status $rc, expected 1 (is the checkpoint now under 64 KiB?)"
grep -qF "error: cannot write $out/checkpoint.safetensors: File too large (the previous file, if any, is unchanged)" \
  "$log/stderr" || fail "stderr does not name the checkpoint and the reason it could not be written"
listing=$(ls -A "$out")
[ "$listing" = "results.json" ] || fail "the output folder holds '$listing', not only results.json"
grep -q '"complete": false' "$out/results.json" || fail "no unfinished results.json"

"$@" --out "$out" --resume >"$log/resume.stdout" 2>"$log/resume.stderr"
rc=$?
[ "$rc" -eq 0 ] || fail "--resume with room on the disk: exit status $rc, expected 0"
grep -q '"complete": true' "$out/results.json" || fail "--resume did not finish the experiment"
[ -f "$out/checkpoint.safetensors" ] && fail "a finished experiment left its checkpoint"
rm -rf "$log"
echo "on a full disk the checkpoint write failed cleanly; --resume with room finished the experiment"
