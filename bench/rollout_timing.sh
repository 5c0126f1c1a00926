#!/usr/bin/env bash
# Times a rollout on real processes: from `recsys rollout --version NEW` to the
# gateway's switch (recsys_gateway_bundle_switches_total going up), and from the
# switch to the old version's memory released (the retrieval nodes' RSS back
# near what one version takes). Two retrieval nodes (one per shard), a gateway,
# a throwaway etcd; no traffic.
#
#   bench/rollout_timing.sh ROOT OLD NEW      # ROOT holds versions OLD and NEW
#
# BIN (target/release) picks the binaries, RETIRE_MS (5000) the nodes'
# --retire-after-ms, LOAD_MODE (packed) their --load-mode.
set -euo pipefail
ROOT=$1 OLD=$2 NEW=$3
BIN=${BIN:-target/release}
RETIRE_MS=${RETIRE_MS:-5000}
LOAD_MODE=${LOAD_MODE:-packed}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

CLIENT=$(port) PEER=$(port)
etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$CLIENT" \
  --advertise-client-urls "http://127.0.0.1:$CLIENT" \
  --listen-peer-urls "http://127.0.0.1:$PEER" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
ETCD="http://127.0.0.1:$CLIENT"
E=(--etcd "$ETCD" --cluster bench)
until "$BIN/recsys" rollout "${E[@]}" --status >/dev/null 2>&1; do sleep 0.1; done
"$BIN/recsys" rollout "${E[@]}" --version "$OLD" >/dev/null

NODES=()
for shard in 0 1; do
  addr=127.0.0.1:$(port)
  RUST_LOG=warn "$BIN/retrieval-node" --bundle-root "$ROOT" --shard "$shard" --listen "$addr" \
    --load-mode "$LOAD_MODE" --retire-after-ms "$RETIRE_MS" "${E[@]}" 2>"$WORK/node-$shard.log" &
  PIDS+=($!) NODES+=($!)
  until "$BIN/recsys" health --addr "$addr" >/dev/null 2>&1; do sleep 0.1; done
done
GW=127.0.0.1:$(port) METRICS=127.0.0.1:$(port)
RUST_LOG=warn "$BIN/gateway" --bundle-root "$ROOT" --listen "$GW" --metrics-listen "$METRICS" \
  "${E[@]}" 2>"$WORK/gateway.log" &
PIDS+=($!)
until "$BIN/recsys" health --addr "$GW" >/dev/null 2>&1; do sleep 0.1; done
switches() { curl -s "http://$METRICS/metrics" | awk '/^recsys_gateway_bundle_switches_total/ {print $2}'; }
before_switches=$(switches); before_switches=${before_switches:-0}
rss_before=0; for pid in "${NODES[@]}"; do rss_before=$((rss_before + $(rss_kb "$pid"))); done

t0=$(now_ms)
"$BIN/recsys" rollout "${E[@]}" --version "$NEW" >/dev/null
peak=$rss_before t_switch=""
while :; do
  rss=0; for pid in "${NODES[@]}"; do rss=$((rss + $(rss_kb "$pid"))); done
  ((rss > peak)) && peak=$rss
  if [[ -z $t_switch ]]; then
    s=$(switches); if [[ ${s:-0} != "$before_switches" ]]; then t_switch=$(now_ms); fi
  elif ((peak > rss_before * 3 / 2 && rss < rss_before + (peak - rss_before) / 4)); then
    t_released=$(now_ms); break
  fi
  if (( $(now_ms) - t0 > 600000 )); then echo "gave up after 10 minutes" >&2; exit 1; fi
  sleep 0.05
done
echo "rollout -> gateway switch: $((t_switch - t0)) ms"
echo "switch -> old version released: $((t_released - t_switch)) ms (retire-after $RETIRE_MS ms)"
echo "retrieval nodes' RSS: one version $((rss_before / 1024)) MiB, both $((peak / 1024)) MiB, after $((rss / 1024)) MiB"
