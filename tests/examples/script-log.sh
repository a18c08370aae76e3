# Sourced by this folder's test scripts once they have set $out (the program's output folder):
# a fresh, empty $out, a log folder $log beside it for the program's stdout and stderr, and
# fail MESSAGE, which prints the message and every log, then exits 1.
log="$out.log"
rm -rf "$out" "$log"
mkdir -p "$log"

fail() {
  echo "FAILED: $1" >&2
  for f in "$log"/*; do
    [ -f "$f" ] && { echo "--- $f:" >&2; cat "$f" >&2; }
  done
  exit 1
}
