#!/usr/bin/env python3
"""The TFRS side of the ranking-latency benchmark: DCN tutorial ranker, one user, one thread.

Run from the repository root:

    TF_USE_LEGACY_KERAS=1 target/tfrs-venv/bin/python bench/tfrs_dcn_timing.py

(optionally with `--calls 300 --batch 200,1000`). Needs the venv in target/tfrs-venv
(tensorflow-cpu 2.21, tf-keras 2.21, tensorflow-recommenders 0.7.7, numpy).

The model is the ranker of the TensorFlow Recommenders "Deep & Cross Network" tutorial
(https://www.tensorflow.org/recommenders/examples/dcn), full-rank variant
`DCN(use_cross_layer=True, deep_layer_sizes=[192, 192])`:

    six categorical features, each  Lookup (StringLookup / IntegerLookup, mask_token=None)
                                     -> Embedding(len(vocabulary) + 1, 32)
    concat                          -> x0, 192-d
    tfrs.layers.dcn.Cross()         (full rank: one 192x192 Dense + bias)
    Dense(192, relu) -> Dense(192, relu) -> Dense(1)

The string features are movie_id, user_id, user_zip_code and user_occupation_text; the
integer features are user_gender and bucketized_user_age, as in the tutorial. The
vocabularies are synthetic but have the MovieLens 100K sizes ("m1".."m1682", "u1".."u943",
795 zip codes, 21 occupations, genders {0, 1}, the 7 age buckets). Weights are the
default initializers under a fixed seed: latency does not depend on trained values.

TensorFlow is pinned to one intra-op and one inter-op thread before any op runs, and
scoring goes through one `tf.function` with a fixed input signature (batch dimension
None, so every batch size shares a single trace), as a TFRS user serving the model would.

For each batch size N in --batch, the input is ONE user and N distinct candidate movies
(user features repeated N times), built once as tensors. After --warmup untimed calls,
each of --calls calls is timed on its own with time.perf_counter; a call includes fetching
the N scores back as a NumPy array. Output is JSON lines on stdout: first
{"engine": "tfrs", "event": "model", "params": ..., "x0_dim": 192}, then one line per
batch size with median / p90 / mean milliseconds per call. TensorFlow's own logging
goes to stderr.
"""
import argparse
import json
import os
import statistics
import sys
import time

# tensorflow_recommenders 0.7.x needs Keras 2 (tf-keras); TF >= 2.16 defaults to Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# One thread, set before any op runs (these calls fail once the runtime is initialized).
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import tensorflow_recommenders as tfrs  # noqa: E402

EMBEDDING_DIM = 32
STR_FEATURES = ["movie_id", "user_id", "user_zip_code", "user_occupation_text"]
INT_FEATURES = ["user_gender", "bucketized_user_age"]
ALL_FEATURES = STR_FEATURES + INT_FEATURES  # concat order of the tutorial


def synthetic_vocabularies():
    """Vocabularies with the sizes the tutorial's MovieLens 100K data yields."""
    return {
        "movie_id": np.array([f"m{i}" for i in range(1, 1683)]),  # 1682
        "user_id": np.array([f"u{i}" for i in range(1, 944)]),  # 943
        "user_zip_code": np.array([f"z{i}" for i in range(1, 796)]),  # 795
        "user_occupation_text": np.array([f"o{i}" for i in range(1, 22)]),  # 21
        "user_gender": np.array([0, 1], dtype=np.int64),  # 2
        "bucketized_user_age": np.array([1, 18, 25, 35, 45, 50, 56], dtype=np.int64),  # 7
    }


class DCN(tfrs.Model):
    """The tutorial's DCN ranker (use_cross_layer=True, projection_dim=None)."""

    def __init__(self, vocabularies, deep_layer_sizes=(192, 192)):
        super().__init__()
        self._embeddings = {}
        for name in STR_FEATURES:
            vocabulary = vocabularies[name]
            self._embeddings[name] = tf.keras.Sequential([
                tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token=None),
                tf.keras.layers.Embedding(len(vocabulary) + 1, EMBEDDING_DIM),
            ])
        for name in INT_FEATURES:
            vocabulary = vocabularies[name]
            self._embeddings[name] = tf.keras.Sequential([
                # The tutorial's `mask_value=None` is spelled `mask_token=None` in tf-keras 2.21.
                tf.keras.layers.IntegerLookup(vocabulary=vocabulary, mask_token=None),
                tf.keras.layers.Embedding(len(vocabulary) + 1, EMBEDDING_DIM),
            ])
        self._cross_layer = tfrs.layers.dcn.Cross(projection_dim=None, kernel_initializer="glorot_uniform")
        self._deep_layers = [tf.keras.layers.Dense(size, activation="relu") for size in deep_layer_sizes]
        self._logit_layer = tf.keras.layers.Dense(1)
        # Training-only, kept for fidelity with the tutorial; not used when scoring.
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError("RMSE")],
        )

    def call(self, features):
        x = tf.concat([self._embeddings[name](features[name]) for name in ALL_FEATURES], axis=1)
        x = self._cross_layer(x)
        for layer in self._deep_layers:
            x = layer(x)
        return self._logit_layer(x)

    def compute_loss(self, features, training=False):
        labels = features.pop("user_rating")
        return self.task(labels=labels, predictions=self(features))


def one_user_inputs(vocabularies, n, rng):
    """ONE user (a random value per user feature, repeated n times) and n distinct movies."""
    if n > len(vocabularies["movie_id"]):
        raise SystemExit(f"batch {n} exceeds the {len(vocabularies['movie_id'])} distinct movie ids")
    inputs = {"movie_id": tf.constant(rng.choice(vocabularies["movie_id"], size=n, replace=False))}
    for name in ALL_FEATURES[1:]:
        value = rng.choice(vocabularies[name])
        inputs[name] = tf.constant(np.repeat(value, n))
    return inputs


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", default="200,1000", help="comma-separated candidate counts per call")
    p.add_argument("--calls", type=int, default=300, help="timed calls per batch size")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per batch size")
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    tf.keras.utils.set_random_seed(a.seed)  # seeds python, numpy and TF initializers
    rng = np.random.default_rng(a.seed)
    vocabularies = synthetic_vocabularies()
    model = DCN(vocabularies)

    signature = {name: tf.TensorSpec([None], tf.string) for name in STR_FEATURES}
    signature.update({name: tf.TensorSpec([None], tf.int64) for name in INT_FEATURES})

    @tf.function(input_signature=[signature])
    def score(features):
        return model(features)

    # Create the weights eagerly first (as a loaded, trained model would have them), so that
    # the tf.function traces exactly once, then trace it once for all batch sizes.
    model(one_user_inputs(vocabularies, 1, rng))
    score(one_user_inputs(vocabularies, 1, rng))
    params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    x0_dim = int(model._cross_layer._dense.kernel.shape[0])
    print(json.dumps({"engine": "tfrs", "event": "model", "params": params, "x0_dim": x0_dim}), flush=True)

    tf_version = tf.__version__
    tfrs_version = tfrs.__version__.lstrip("v")
    for n in (int(b) for b in a.batch.split(",")):
        inputs = one_user_inputs(vocabularies, n, rng)
        for _ in range(a.warmup):
            scores = score(inputs).numpy()
        assert scores.shape == (n, 1), scores.shape
        ms = []
        for _ in range(a.calls):
            started = time.perf_counter()
            score(inputs).numpy()
            ms.append((time.perf_counter() - started) * 1e3)
        print(json.dumps({"engine": "tfrs", "tf": tf_version, "tfrs": tfrs_version, "batch": n, "calls": a.calls,
                          "median_ms": statistics.median(ms),
                          "p90_ms": float(np.percentile(ms, 90)),
                          "mean_ms": statistics.fmean(ms)}), flush=True)
    traces = score.experimental_get_tracing_count()
    if traces != 1:  # the fixed input signature should make this impossible
        print(f"warning: score() was traced {traces} times", file=sys.stderr)


if __name__ == "__main__":
    main()
