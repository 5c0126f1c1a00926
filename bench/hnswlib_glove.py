#!/usr/bin/env python3
"""The peer of `recsys-bench retrieval`: hnswlib on exactly the same task.

Reads the same GloVe rows, L2-normalizes them the same way, uses the items, queries
and exact ground truth that recsys-bench wrote, builds with the same M and
ef_construction, and queries one thread at a time. Prints one JSON line per ef.
"""
import argparse
import json
import pathlib
import sys
import time

import hnswlib
import numpy as np

import glove_split

K = glove_split.K


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    glove_split.add_arguments(p)
    p.add_argument("--M", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=128)
    p.add_argument("--ef", default="100,128,160,200,256,320")
    p.add_argument("--build-threads", type=int, default=2)
    p.add_argument("--rebuild", action="store_true", help="build even if a saved index exists")
    p.add_argument("--passes", type=int, default=1, help="measurement passes per ef")
    p.add_argument("--order", help="insert items in this order (u32 rows, as recsys-bench --write-order writes)")
    p.add_argument("--stdin", action="store_true",
                   help="print a ready line, then measure one pass per ef read from stdin (bench/interleave.py)")
    a = p.parse_args()

    work = pathlib.Path(a.work)
    items, queries, truth = glove_split.load(a.data, work, a.items, a.queries)

    # The built index is kept beside recsys-bench's bundles, so that repeated runs only search.
    suffix = "-ordered" if a.order else ""
    saved = work / f"hnswlib-{len(items)}-m{a.M}-efc{a.ef_construction}{suffix}.bin"
    index = hnswlib.Index(space="ip", dim=50)
    build_s = None
    if saved.exists() and not a.rebuild:
        index.load_index(str(saved), max_elements=len(items))
    else:
        index.init_index(max_elements=len(items), M=a.M, ef_construction=a.ef_construction, random_seed=100)
        index.set_num_threads(a.build_threads)
        started = time.perf_counter()
        if a.order:
            # Labels stay the row numbers, so recall is computed as before.
            order = np.fromfile(a.order, dtype="<u4").astype(np.int64)
            index.add_items(items[order], order)
        else:
            index.add_items(items, np.arange(len(items)))
        build_s = time.perf_counter() - started
        index.save_index(str(saved))
    print(json.dumps({"engine": "hnswlib", "event": "index", "version": getattr(hnswlib, "__version__", "?"),
                      "items": len(items), "M": a.M, "ef_construction": a.ef_construction, "build_s": build_s,
                      "ordered": bool(a.order)}))
    index.set_num_threads(1)
    if a.stdin:
        print(json.dumps({"engine": "hnswlib", "event": "ready"}), flush=True)
        efs = (int(line) for line in sys.stdin)
    else:
        efs = (int(e) for e in a.ef.split(",") for _ in range(a.passes))
    for ef in efs:
        index.set_ef(ef)
        index.knn_query(queries[:200], k=K)  # warm-up, as on the recsys side
        # One search thread runs in the calling thread, so thread_time() is its CPU time.
        cpu_started = time.thread_time()
        started = time.perf_counter()
        labels, _ = index.knn_query(queries, k=K)
        seconds = time.perf_counter() - started
        cpu_seconds = time.thread_time() - cpu_started
        print(json.dumps({"engine": "hnswlib", "ef": ef, "recall_at_100": glove_split.recall(labels, truth),
                          "qps_one_thread": len(queries) / seconds,
                          "qps_per_cpu_second": len(queries) / cpu_seconds}), flush=True)


if __name__ == "__main__":
    main()
