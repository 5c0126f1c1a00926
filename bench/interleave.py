#!/usr/bin/env python3
"""Alternates retrieval engines pass by pass, so that a noisy machine hits all alike.

Each ENGINE is a shell command that prints one JSON line per pass, after a line with
"event": "ready", for every ef it reads from stdin (`recsys-bench retrieval --stdin`,
`bench/hnswlib_glove.py --stdin`). All engines are started and set up first; then for
every round and every ef each engine measures one pass in turn, the order rotating
from round to round. Passes of one round are a second or two apart, so the ratio of
two engines' passes within a round cancels the slow drifts of a shared VM that swamp
comparisons of separate runs. Prints every pass as a JSON line (tagged with round and
engine label), then a summary: per engine and ef the median queries per CPU-second
and recall, and the median over rounds of each engine's ratio to the first engine.
`LABEL:EFS=COMMAND` gives one engine its own beams, position by position (as many as
`--ef`), so that engines are compared at similar recall rather than equal ef.

    bench/interleave.py --rounds 20 --ef 144,160 \\
      'recsys=target/release/recsys-bench retrieval --data DATA --connectivity 32 --stdin' \\
      'hnswlib=target/bench-venv/bin/python bench/hnswlib_glove.py --data DATA --M 32 --stdin'
"""
import argparse
import json
import statistics
import subprocess
import sys


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--ef", default="144,160", help="comma-separated search beams")
    p.add_argument("engines", nargs="+", metavar="LABEL=COMMAND")
    a = p.parse_args()
    efs = [int(e) for e in a.ef.split(",")]

    labels, commands, procs, engine_efs = [], [], [], []
    for spec in a.engines:
        label, sep, command = spec.partition("=")
        if not sep or not command:
            p.error(f"engine {spec!r} is not LABEL=COMMAND")
        label, _, own = label.partition(":")
        own_efs = [int(e) for e in own.split(",")] if own else efs
        if len(own_efs) != len(efs):
            p.error(f"engine {label} has {len(own_efs)} beams, --ef has {len(efs)}")
        engine_efs.append(own_efs)
        labels.append(label)
        commands.append(command)
    # Set up one engine after the other, in the order given: the first
    # (`recsys-bench retrieval`) writes the queries and ground truth the others read,
    # and index builds measured side by side would share the cores.
    for label, command in zip(labels, commands):
        proc = subprocess.Popen(command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        while True:  # setup lines (index events) come before the ready line
            line = proc.stdout.readline()
            if not line:
                sys.exit(f"engine {label} exited before it was ready")
            event = json.loads(line) if line.startswith("{") else {}
            print(json.dumps({"label": label, **event}), flush=True)
            if event.get("event") == "ready":
                break

    passes = {}  # (label, position in --ef) -> [(round, qps per cpu second, recall)]
    for round_ in range(a.rounds):
        for position in range(len(efs)):
            shift = round_ % len(procs)
            for i in list(range(shift, len(procs))) + list(range(shift)):
                proc = procs[i]
                proc.stdin.write(f"{engine_efs[i][position]}\n")
                proc.stdin.flush()
                line = proc.stdout.readline()
                if not line:
                    sys.exit(f"engine {labels[i]} exited in round {round_}")
                result = json.loads(line)
                print(json.dumps({"round": round_, "label": labels[i], **result}), flush=True)
                passes.setdefault((labels[i], position), []).append(
                    (round_, result["qps_per_cpu_second"], result["recall_at_100"]))
    for proc in procs:
        proc.stdin.close()
        proc.wait()

    print("# summary: queries per CPU-second, median over rounds; ratio = median of per-round ratios to "
          + labels[0])
    for position in range(len(efs)):
        base = {r: q for r, q, _ in passes[(labels[0], position)]}
        for label, own_efs in zip(labels, engine_efs):
            rows = passes[(label, position)]
            qps = [q for _, q, _ in rows]
            ratios = sorted(q / base[r] for r, q, _ in rows)
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
            print(f"ef {own_efs[position]:4} {label:12} recall {rows[0][2]:.4f} qps median {statistics.median(qps):7.0f} "
                  f"(min {min(qps):.0f}, max {max(qps):.0f})  ratio to {labels[0]} {statistics.median(ratios):.3f} "
                  f"(quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})")


if __name__ == "__main__":
    main()
