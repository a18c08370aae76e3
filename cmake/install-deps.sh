#!/usr/bin/env bash
# Installs the Debian packages ablate needs to build, test and benchmark.
#
#   bash cmake/install-deps.sh
#
# Idempotent: packages that are already installed are left alone, and apt-get runs only when
# something is missing.  Runs as root, or through sudo when that exists.  On a machine without
# dpkg it prints a note and exits 0; CMake then names any missing dependency at configure time.
set -euo pipefail

packages=(
  cmake
  g++
  libeigen3-dev
  doctest-dev
  libbenchmark-dev
  libcli11-dev
  nlohmann-json3-dev
  gnuplot-nox
  clang
  libclang-rt-14-dev
  nodejs
  npm
)

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "install-deps.sh: no dpkg-query here (not Debian/Ubuntu?); install by hand:" >&2
  echo "  ${packages[*]}" >&2
  exit 0
fi

# Tools that may come from elsewhere: a command on PATH counts as installed (NodeSource's
# nodejs, for one, bundles npm and conflicts with Debian's npm package).
declare -A provided_by_command=([cmake]=cmake [g++]=g++ [nodejs]=node [npm]=npm)

missing=()
for pkg in "${packages[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" == "installed" ]]; then
    continue
  fi
  cmd="${provided_by_command[$pkg]:-}"
  if [[ -n "$cmd" ]] && command -v "$cmd" >/dev/null 2>&1; then
    continue
  fi
  missing+=("$pkg")
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1; then
  sudo=(sudo)
else
  echo "install-deps.sh: missing packages: ${missing[*]}" >&2
  echo "install-deps.sh: not root and no sudo; install them as root and rerun." >&2
  exit 1
fi

echo "install-deps.sh: installing ${missing[*]}"
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps.sh: done"
