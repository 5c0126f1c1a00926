#!/usr/bin/env python3
"""The ScaNN peer of `recsys-bench retrieval`: ScaNN on exactly the same task.

Reads the same GloVe rows, L2-normalizes them the same way, uses the items, queries
and exact ground truth that recsys-bench wrote, and queries one query per call on
one thread. ScaNN is configured as ann-benchmarks configures it for GloVe (the
configuration TFRS's `ScaNN` layer wraps): a tree of 2,000 leaves with spherical,
quantized centroids, anisotropic hashing with 2 dimensions per block and threshold
0.2, exact reordering. Each pass searches `leaves_to_search` leaves (the number
read from stdin or given by --leaves) and reorders `--reorder` candidates exactly.
Prints one JSON line per pass, as bench/hnswlib_glove.py does, so that
bench/interleave.py alternates it with the others.
"""
import argparse
import json
import pathlib
import sys
import time

import numpy as np

import glove_split
import scann

K = glove_split.K


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    glove_split.add_arguments(p)
    p.add_argument("--leaves-total", type=int, default=2_000)
    p.add_argument("--leaves", default="30,40,60,90", help="leaves searched per pass (without --stdin)")
    p.add_argument("--reorder", type=int, default=300, help="candidates re-scored exactly")
    p.add_argument("--batched", action="store_true", help="also time search_batched (one thread)")
    p.add_argument("--stdin", action="store_true",
                   help="print a ready line, then measure one pass per leaves count read from stdin")
    a = p.parse_args()

    work = pathlib.Path(a.work)
    items, queries, truth = glove_split.load(a.data, work, a.items, a.queries)

    saved = (work / f"scann-{len(items)}-l{a.leaves_total}").resolve()
    build_s = None
    if (saved / "scann_assets.pbtxt").exists():
        searcher = scann.scann_ops_pybind.load_searcher(str(saved))
    else:
        started = time.perf_counter()
        searcher = (
            scann.scann_ops_pybind.builder(items, K, "dot_product")
            .tree(num_leaves=a.leaves_total, num_leaves_to_search=100, training_sample_size=len(items),
                  spherical=True, quantize_centroids=True)
            .score_ah(2, anisotropic_quantization_threshold=0.2)
            .reorder(a.reorder)
            .build()
        )
        build_s = time.perf_counter() - started
        saved.mkdir(parents=True, exist_ok=True)
        searcher.serialize(str(saved))
    print(json.dumps({"engine": "scann", "event": "index", "version": getattr(scann, "__version__", "?"),
                      "items": len(items), "leaves": a.leaves_total, "reorder": a.reorder,
                      "build_s": build_s}), flush=True)
    if a.stdin:
        print(json.dumps({"engine": "scann", "event": "ready"}), flush=True)
        passes = (int(line) for line in sys.stdin)
    else:
        passes = (int(x) for x in a.leaves.split(","))
    for leaves in passes:
        search = lambda q: searcher.search(q, final_num_neighbors=K, pre_reorder_num_neighbors=a.reorder,
                                           leaves_to_search=leaves)[0]
        for q in queries[:200]:  # warm-up, as on the other sides
            search(q)
        # One query per call in the calling thread, so thread_time() is its CPU time.
        cpu_started = time.thread_time()
        started = time.perf_counter()
        labels = [search(q) for q in queries]
        seconds = time.perf_counter() - started
        cpu_seconds = time.thread_time() - cpu_started
        line = {"engine": "scann", "ef": leaves, "reorder": a.reorder, "recall_at_100": glove_split.recall(labels, truth),
                "qps_one_thread": len(queries) / seconds, "qps_per_cpu_second": len(queries) / cpu_seconds}
        if a.batched:
            cpu_started = time.thread_time()
            searcher.search_batched(queries, final_num_neighbors=K, pre_reorder_num_neighbors=a.reorder,
                                    leaves_to_search=leaves)
            line["batched_qps_per_cpu_second"] = len(queries) / (time.thread_time() - cpu_started)
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
