#!/usr/bin/env python3
"""The TFRS side of the two-stage cost benchmark: retrieve and rank in process, one thread.

Run from the repository root, after `recsys-bench two-stage` has written the queries:

    TF_USE_LEGACY_KERAS=1 target/tfrs-venv/bin/python bench/tfrs_two_stage_timing.py \
        --data DATA --work target/bench-glove

Needs the venv in target/tfrs-venv (tensorflow-cpu 2.21, tf-keras 2.21,
tensorflow-recommenders 0.7.7, numpy); `bench/ranking_vs_tfrs.sh` makes it.

The request is the one `recsys-bench two-stage` sends through its cluster: a held-out
GloVe-50 query (the same 1000 rows, from the work directory) retrieves the best 200 of the
first 390 000 rows (L2-normalized, inner product) with TFRS's exact
`tfrs.layers.factorized_top_k.BruteForce(k=200)`, the DCN tutorial ranker
(`tfrs_dcn_timing.DCN`, random weights under a fixed seed) scores the 200 for one user, and
the best 10 by score are the answer. Item i is movie (i - 1) mod 1682 + 1, as in the
recsys ranker's item table. Both stages are one `tf.function` with a fixed signature, as a
TFRS user serving the pair would write it; TensorFlow gets one intra-op and one inter-op
thread. Timed per request: wall time and CPU time of the process (every thread), after a
warm-up pass. Output: one JSON line on stdout.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402  (tfrs_dcn_timing pins the threads on import)

import tfrs_dcn_timing as dcn  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

MOVIES = 1682


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="directory written by shared/data/fetch.sh")
    p.add_argument("--work", default="target/bench-glove")
    p.add_argument("--items", type=int, default=390_000)
    p.add_argument("--queries", type=int, default=1_000)
    p.add_argument("--retrieve-k", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    rows = np.fromfile(os.path.join(a.data, "glove-6B-50d", "vectors.f32"), dtype=np.float32).reshape(-1, 50)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    rows = rows / np.where(norms > 0, norms, 1)
    items = rows[: a.items]
    queries = np.fromfile(os.path.join(a.work, f"queries-{a.items}-{a.queries}.f32"), dtype=np.float32).reshape(-1, 50)

    tf.keras.utils.set_random_seed(a.seed)
    vocabularies = dcn.synthetic_vocabularies()
    model = dcn.DCN(vocabularies)
    rng = np.random.default_rng(a.seed)
    model(dcn.one_user_inputs(vocabularies, 1, rng))

    index = tfrs.layers.factorized_top_k.BruteForce(k=a.retrieve_k)
    index.index(tf.constant(items), identifiers=tf.range(a.items, dtype=tf.int64))
    movie_of_item = tf.constant([f"m{(i - 1) % MOVIES + 1}" for i in range(a.items)])
    user = {name: vocabularies[name][1] for name in dcn.ALL_FEATURES[1:]}

    @tf.function(input_signature=[tf.TensorSpec([1, 50], tf.float32)])
    def two_stage(query):
        _, candidates = index(query)
        candidates = candidates[0]
        n = tf.shape(candidates)[0]
        features = {"movie_id": tf.gather(movie_of_item, candidates)}
        for name, value in user.items():
            features[name] = tf.fill([n], tf.constant(value))
        scores = model(features)[:, 0]
        _, best = tf.math.top_k(scores, k=a.k)
        return tf.gather(candidates, best)

    for query in queries[:20]:
        two_stage(query[None, :]).numpy()
    wall_ms, cpu_ms = [], []
    for query in queries:
        wall, cpu = time.perf_counter(), time.process_time()
        answer = two_stage(query[None, :]).numpy()
        cpu_ms.append((time.process_time() - cpu) * 1e3)
        wall_ms.append((time.perf_counter() - wall) * 1e3)
        assert answer.shape == (a.k,), answer.shape
    print(json.dumps({
        "engine": "tfrs", "event": "two_stage", "tf": tf.__version__, "tfrs": tfrs.__version__.lstrip("v"),
        "items": a.items, "queries": len(queries), "retrieve_k": a.retrieve_k, "k": a.k,
        "wall_median_ms": statistics.median(wall_ms), "wall_mean_ms": statistics.fmean(wall_ms),
        "cpu_mean_us": statistics.fmean(cpu_ms) * 1e3,
    }), flush=True)


if __name__ == "__main__":
    main()
