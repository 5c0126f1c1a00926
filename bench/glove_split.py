"""The GloVe task every retrieval peer measures: the same rows as `recsys-bench
retrieval`, L2-normalized the same way, and the held-out queries and exact top-100
it wrote into WORK (run it first). Shared by bench/hnswlib_glove.py and
bench/scann_glove.py so that the peers cannot drift apart."""
import pathlib

import numpy as np

K = 100
DIM = 50


def add_arguments(parser):
    """The task's options, named as `recsys-bench retrieval` names them."""
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", default="target/bench-glove")
    parser.add_argument("--items", type=int, default=390_000)
    parser.add_argument("--queries", type=int, default=1_000)


def load(data, work, items, queries):
    """Returns (items, queries, truth) as float32, float32 and uint32 arrays."""
    work = pathlib.Path(work)
    vectors = np.fromfile(pathlib.Path(data) / "glove-6B-50d" / "vectors.f32", dtype="<f4").reshape(-1, DIM)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1)
    base = np.ascontiguousarray(vectors[:items], dtype=np.float32)
    held_out = np.fromfile(work / f"queries-{items}-{queries}.f32", dtype="<f4").reshape(-1, DIM)
    truth = np.fromfile(work / f"truth-{items}-{queries}.u32", dtype="<u4").reshape(-1, K)
    return base, held_out, truth


def recall(labels, truth):
    """The share of the exact top-100 found, over all queries."""
    found = sum(len(set(row.tolist()) & set(t.tolist())) for row, t in zip(labels, truth))
    return found / truth.size
