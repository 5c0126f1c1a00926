#!/usr/bin/env bash
# Rebuilds third_party/usearch from its pinned upstream release and the patch series:
# the crate named in UPSTREAM, from cargo's cache (fetched through cargo when missing,
# its sha256 checked), less the files we do not vendor, plus patches/*.patch in order.
#
#   apply-patches.sh OUT_DIR     write the result to OUT_DIR (must not exist or be empty)
#   apply-patches.sh --check     compare the result with third_party/usearch; exit 1 and
#                                name the files that differ (make lint runs this)
#   apply-patches.sh --git DIR   make DIR a git repository: upstream as the first commit,
#                                one commit per patch (git am), to edit or rebase the series
#
# Works offline once the crate is in cargo's cache. See ../README.md.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd) # third_party/usearch
mode=out
target=""
case "${1:-}" in
  --check) mode=check ;;
  --git) mode=git; target=${2:-} ;;
  -h | --help) sed -n '2,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
  "") sed -n '2,11s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
  -*) echo "apply-patches: unknown option $1" >&2; exit 2 ;;
  *) target=$1 ;;
esac
if [ "$mode" != check ] && [ -z "$target" ]; then
  echo "apply-patches: $1 needs a directory" >&2; exit 2
fi
if [ -n "$target" ] && [ -e "$target" ] && [ -n "$(ls -A "$target")" ]; then
  echo "apply-patches: $target exists and is not empty" >&2; exit 2
fi

field() { sed -n "s/^$1 *= *//p" "$here/UPSTREAM"; }
name=$(field name)
version=$(field version)
sha256=$(field sha256)
if [ -z "$name" ] || [ -z "$version" ] || [ -z "$sha256" ]; then
  echo "apply-patches: $here/UPSTREAM needs name, version and sha256 lines" >&2; exit 1
fi
crate_file="$name-$version.crate"

# Packaging files cargo adds to a published crate, and upstream's READMEs (ours replaces
# them): not vendored.
not_vendored=(.cargo_vcs_info.json Cargo.toml.orig Cargo.lock README.md rust/README.md)
# Ours, beside the upstream files: not compared by --check.
ours=(README.md LICENSE UPSTREAM patches scripts)

work=$(mktemp -d "${TMPDIR:-/tmp}/usearch-patches.XXXXXX")
trap 'rm -rf "$work"' EXIT

find_crate() {
  local f
  for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate_file"; do
    if [ -f "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" = "$sha256" ]; then
      echo "$f"; return 0
    fi
  done
  return 1
}

# The workspace patches usearch out of crates.io, so its builds never download the
# crate: a throwaway package that depends on it makes cargo put it in the cache.
fetch_crate() {
  local pkg="$work/fetch"
  mkdir -p "$pkg/src"
  : >"$pkg/src/lib.rs"
  cat >"$pkg/Cargo.toml" <<EOF
[package]
name = "fetch-$name"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$name = { version = "=$version", default-features = false }

[workspace]
EOF
  echo "apply-patches: $crate_file is not in cargo's cache; fetching it with cargo" >&2
  (cd "$pkg" && cargo fetch --quiet) >&2
}

crate=$(find_crate) || { fetch_crate && crate=$(find_crate); } || {
  found=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$crate_file" 2>/dev/null || true)
  if [ -n "$found" ]; then
    echo "apply-patches: $found does not have the sha256 in UPSTREAM ($sha256)" >&2
  else
    echo "apply-patches: $crate_file is not in cargo's cache and cargo could not fetch it" \
      "(offline?); run this once with network access" >&2
  fi
  exit 1
}

tree="$work/$name-$version"
tar -xzf "$crate" -C "$work"
for f in "${not_vendored[@]}"; do rm -f "$tree/$f"; done

if [ "$mode" = git ]; then
  mkdir -p "$target"
  cp -a "$tree/." "$target/"
  cd "$target"
  git init -q
  git add -A
  git -c user.name=upstream -c user.email=upstream@invalid commit -q -m "$name $version as published"
  git tag upstream
  git -c user.name=recsys -c user.email=recsys@invalid am -q "$here"/patches/*.patch
  echo "apply-patches: $target holds $name $version and $(ls "$here"/patches/*.patch | wc -l) patch commits"
  exit 0
fi

# The patches are applied outside any repository, so git apply acts like patch(1),
# without fuzz: GIT_CEILING_DIRECTORIES keeps it from finding one above the tree.
for p in "$here"/patches/*.patch; do
  if ! (cd "$tree" && GIT_CEILING_DIRECTORIES="$work" git apply --whitespace=nowarn "$p"); then
    echo "apply-patches: $(basename "$p") does not apply to $name $version" >&2
    exit 1
  fi
done

if [ "$mode" = out ]; then
  mkdir -p "$target"
  cp -a "$tree/." "$target/"
  echo "apply-patches: $name $version + $(ls "$here"/patches/*.patch | wc -l) patches in $target"
  exit 0
fi

vendored="$work/vendored"
cp -a "$here" "$vendored"
for f in "${ours[@]}"; do rm -rf "${vendored:?}/$f"; done
if ! diff -ru "$tree" "$vendored" >"$work/diff"; then
  echo "apply-patches: third_party/usearch is not $name $version + patches/*.patch; these differ:" >&2
  sed -n -e "s|^diff -ru $tree/\(.*\) $vendored/.*|  \1|p" \
    -e "s|^Only in $tree\(.*\): \(.*\)|  \2 (only upstream + patches, in .\1)|p" \
    -e "s|^Only in $vendored\(.*\): \(.*\)|  \2 (only vendored, in .\1)|p" "$work/diff" >&2
  echo "change the patch series with '$0 --git DIR' (see README.md), or undo the edit;" \
    "the difference (first 60 lines; - is upstream + patches, + is vendored):" >&2
  sed -e "s|$tree/||; s|$vendored/||" "$work/diff" | head -n 60 >&2
  exit 1
fi
echo "apply-patches: third_party/usearch is $name $version + $(ls "$here"/patches/*.patch | wc -l) patches"
