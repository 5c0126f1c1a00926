#!/usr/bin/env bash
# Retrieval node search path vs hnswlib on GloVe-50, same task, same run, one core each.
#   bench/retrieval_vs_hnswlib.sh DATA_DIR [extra recsys-bench retrieval flags]
# --connectivity, --expansion-add, --ef and --passes (space-separated form) are passed
# on to hnswlib as --M, --ef-construction, --ef and --passes.
# DATA_DIR is what ../shared/data/fetch.sh wrote. ROUNDS=N (default 1) alternates the
# two engines N times, so a noisy machine shows up as spread rather than bias.
# Output: JSON lines, recsys then hnswlib, each tagged with its round.
# INTERLEAVE=N instead alternates the engines pass by pass for N rounds
# (bench/interleave.py; the method for a noisy VM) and ends with a summary of
# per-round ratios. Then --ef must be given, and --passes is not used.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: bench/retrieval_vs_hnswlib.sh DATA_DIR [flags]}"; shift
venv=target/bench-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check hnswlib numpy
fi
scripts/install-deps.sh
cargo build -q --release -p recsys-bench
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
# hnswlib gets the same graph parameters, beams and passes as recsys.
peer=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --connectivity) peer+=(--M "${args[i + 1]}") ;;
    --expansion-add) peer+=(--ef-construction "${args[i + 1]}") ;;
    --ef) peer+=(--ef "${args[i + 1]}") ;;
    --passes) peer+=(--passes "${args[i + 1]}") ;;
  esac
done
if [ -n "${INTERLEAVE:-}" ]; then
  efs=""
  for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[i]}" = --ef ] && efs="${args[i + 1]}"
  done
  [ -n "$efs" ] || { echo "INTERLEAVE needs --ef" >&2; exit 2; }
  quoted=$(printf ' %q' "$@")
  peer_quoted=$(printf ' %q' "${peer[@]}")
  exec bench/interleave.py --rounds "$INTERLEAVE" --ef "$efs" \
    "recsys=${CARGO_TARGET_DIR:-target}/release/recsys-bench retrieval --data $(printf %q "$data")$quoted --stdin" \
    "hnswlib=$venv/bin/python bench/hnswlib_glove.py --data $(printf %q "$data")$peer_quoted --stdin"
fi
for round in $(seq "${ROUNDS:-1}"); do
  "${CARGO_TARGET_DIR:-target}/release/recsys-bench" retrieval --data "$data" "$@" |
    sed "s/^{/{\"round\":$round,/"
  "$venv/bin/python" bench/hnswlib_glove.py --data "$data" "${peer[@]}" |
    sed "s/^{/{\"round\":$round,/"
done
