#!/usr/bin/env bash
# Issue 21, part 3: a two-stage request (GloVe-50 retrieval of 200, the DCN tutorial
# ranker) through a cluster of processes against its kernels' in-process sum, and
# against TFRS in process (BruteForce + the tutorial DCN), alternated round by round:
#   bench/two_stage_vs_tfrs.sh DATA [ROUNDS]
# DATA is the ../shared/data/fetch.sh directory; WORK (default target/bench-glove)
# keeps the bundle and queries between runs. Output: JSON lines, then a table.
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:?usage: bench/two_stage_vs_tfrs.sh DATA [ROUNDS]}"
rounds="${2:-3}"
work="${WORK:-target/bench-glove}"
. bench/tfrs_venv.sh
scripts/install-deps.sh
cargo build -q --release -p recsys-bench -p recsys-gateway -p recsys-retrieval-node -p recsys-ranking-node
target_dir="${CARGO_TARGET_DIR:-target}"
bench="$target_dir/release/recsys-bench"
log="$(mktemp)"
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
export TF_USE_LEGACY_KERAS=1
for round in $(seq "$rounds"); do
  "$bench" two-stage --data "$data" --work "$work" | sed "s/^{/{\"round\":$round,/" | tee -a "$log"
  "$venv/bin/python" bench/tfrs_two_stage_timing.py --data "$data" --work "$work" 2>/dev/null \
    | sed "s/^{/{\"round\": $round, /" | tee -a "$log"
done
python3 - "$log" <<'PY'
import json, sys
rounds = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    rounds.setdefault(d["round"], {})[d["event"]] = d
print("| round | kernels (search + rank) µs | kernels request by request µs | cluster CPU µs/request | cluster / kernels | cluster / request by request | QPS at saturation | p99 / p50 at half rate | TFRS in-process CPU µs/request | TFRS / cluster |")
print("|---|---|---|---|---|---|---|---|---|---|")
for r, e in sorted(rounds.items()):
    k, s, h, t = e["kernels"], e["saturation"], e["half_rate"], e["two_stage"]
    print(f"| {r} | {k['search_cpu_us']:.0f} + {k['rank_cpu_us']:.0f} = {k['sum_cpu_us']:.0f} | {k['per_request_cpu_us']:.0f} "
          f"| {s['cpu_us_per_request']:.0f} | {s['cpu_us_per_request'] / k['sum_cpu_us']:.2f}× "
          f"| {s['cpu_us_per_request'] / k['per_request_cpu_us']:.2f}× | {s['qps']:.0f} | {h['p99_over_p50']:.2f} "
          f"| {t['cpu_mean_us']:.0f} | {t['cpu_mean_us'] / s['cpu_us_per_request']:.2f}× |")
PY
