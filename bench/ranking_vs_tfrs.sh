#!/usr/bin/env bash
# The TFRS DCN tutorial ranker, one thread, recsys vs TFRS/Keras in the same run:
#   bench/ranking_vs_tfrs.sh [ROUNDS]
# Each round runs TFRS, recsys in-process, and recsys through a ranking node's
# gRPC Rank, alternating so that a noisy machine shows up as spread, not bias.
# Output: JSON lines; the last lines are a table of medians (ms) per round.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3}"
. bench/tfrs_venv.sh
scripts/install-deps.sh
cargo build -q --release -p recsys-bench
target_dir="${CARGO_TARGET_DIR:-target}"
bench="$target_dir/release/recsys-bench"
log="$(mktemp)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
export RAYON_NUM_THREADS=1 TF_USE_LEGACY_KERAS=1
for round in $(seq "$rounds"); do
  "$venv/bin/python" bench/tfrs_dcn_timing.py --calls 300 2>/dev/null | sed "s/^{/{\"round\": $round, \"side\": \"tfrs\", /" | tee -a "$log"
  "$bench" ranking --calls 300 | sed "s/^{/{\"round\":$round,\"side\":\"in-process\",/" | tee -a "$log"
  "$bench" ranking --calls 300 --grpc 2>/dev/null | sed "s/^{/{\"round\":$round,\"side\":\"grpc\",/" | tee -a "$log"
done
python3 - "$log" <<'PY'
import json, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    if "batch" in d:
        rows.setdefault((d["batch"], d["round"]), {})[d["side"]] = d["median_ms"]
print("| candidates | round | TFRS | recsys in-process | speed-up | recsys gRPC | speed-up |")
print("|---|---|---|---|---|---|---|")
for (batch, rnd), m in sorted(rows.items()):
    t, i, g = m["tfrs"], m["in-process"], m["grpc"]
    print(f"| {batch} | {rnd} | {t:.3f} | {i:.3f} | {t / i:.2f}× | {g:.3f} | {t / g:.2f}× |")
PY
rm -f "$log"
