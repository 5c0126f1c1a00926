#!/usr/bin/env bash
# Training time of TFRS's basic retrieval tutorial: TFRS itself vs `recsys train retrieval
# --preset tfrs-basic`, same data files, same settings, in the same run:
#   bench/train_vs_tfrs.sh DATA_DIR [ROUNDS]
# Rounds alternate TFRS (training metrics off, then on as the tutorial has them)
# and recsys, so that a noisy machine shows up as spread, not bias. Both use every
# core. Output: JSON lines per run, then a table of wall times (seconds).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: bench/train_vs_tfrs.sh DATA_DIR [ROUNDS]}"
rounds="${2:-3}"
. bench/tfrs_venv.sh
cargo build -q --release -p recsys-cli
recsys="${CARGO_TARGET_DIR:-target}/release/recsys"
log="$(mktemp)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
export TF_USE_LEGACY_KERAS=1
for round in $(seq "$rounds"); do
  load="$(cut -d' ' -f1 /proc/loadavg)"
  "$venv/bin/python" bench/tfrs_retrieval_timing.py --data "$data" 2>/dev/null \
    | sed "s/^{/{\"round\": $round, \"load\": $load, /" | tee -a "$log"
  load="$(cut -d' ' -f1 /proc/loadavg)"
  out="$("$recsys" train retrieval --data "$data" --preset tfrs-basic 2>/dev/null)"
  seconds="$(echo "$out" | sed -n 's/^training \([0-9.]*\)s.*/\1/p')"
  epochs="$(echo "$out" | sed -n 's/^epoch [0-9]*\/[0-9]*: loss [0-9.]*, \([0-9.]*\)s$/\1/p' | paste -sd, -)"
  top100="$(echo "$out" | awk '/^test \(/ {print $NF}')"
  echo "{\"round\": $round, \"load\": $load, \"engine\": \"recsys\", \"fit_seconds\": $seconds, \"epoch_seconds\": [$epochs], \"test_top_100\": $top100}" | tee -a "$log"
done
python3 - "$log" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    side = d["engine"] if d["engine"] == "recsys" else ("tfrs+metrics" if d["train_metrics"] else "tfrs")
    rows.setdefault(d["round"], {})[side] = d
print("| round | TFRS, no training metrics | TFRS as the tutorial (metrics on) | recsys | TFRS / recsys | load (1 min) |")
print("|---|---|---|---|---|---|")
for rnd, m in sorted(rows.items()):
    t, tm, r = m["tfrs"]["fit_seconds"], m["tfrs+metrics"]["fit_seconds"], m["recsys"]["fit_seconds"]
    print(f"| {rnd} | {t:.1f} | {tm:.1f} | {r:.1f} | {t / r:.2f}× | {m['tfrs']['load']}, {m['recsys']['load']} |")
med = lambda side: statistics.median(m[side]["fit_seconds"] for m in rows.values())
print(f"| median | {med('tfrs'):.1f} | {med('tfrs+metrics'):.1f} | {med('recsys'):.1f} | {med('tfrs') / med('recsys'):.2f}× | |")
PY
rm -f "$log"
