#!/usr/bin/env python3
"""The TFRS side of the training-time comparison: the basic retrieval tutorial, timed.

Run from the repository root:

    TF_USE_LEGACY_KERAS=1 target/tfrs-venv/bin/python bench/tfrs_retrieval_timing.py --data /work/data/ml-100k

Needs the venv in target/tfrs-venv (tensorflow-cpu 2.21, tf-keras 2.21,
tensorflow-recommenders 0.7.7, numpy); `bench/train_vs_tfrs.sh` makes it.

The model and settings are those of TensorFlow Recommenders' basic retrieval tutorial
(https://www.tensorflow.org/recommenders/examples/basic_retrieval), fed from the same
MovieLens 100K files `recsys train` reads (u.data, u.item) instead of tensorflow_datasets:

    ratings   (user_id, movie_title), 100 000; movies: the 1682 titles of u.item
    split     shuffle(100_000, seed=42, reshuffle_each_iteration=False), take 80 000 / skip 80 000
    towers    StringLookup(unique ids, mask_token=None) -> Embedding(len + 1, 32), one per side
    task      tfrs.tasks.Retrieval(metrics=FactorizedTopK(movies.batch(128).map(movie_model)))
    training  Adagrad(0.1), train.shuffle(100_000).batch(8192).cache(), 3 epochs

The tutorial computes the FactorizedTopK metric on every training step (the whole
catalog is scored for each batch). `recsys train` does not, so `--train-metrics off`
passes `compute_metrics=False` during training (TFRS's own advice for speed) and that
is the like-for-like figure; `on` is the tutorial as written. The default runs both.

Timed: wall time of `model.fit` (tracing included, as a user sees it), and each epoch
through a callback. Data loading, vocabularies and the test evaluation are not timed;
the test top-100 is printed to show the run trained. TensorFlow uses every core (its
default), as `recsys train` does. Output: one JSON line per mode on stdout.
"""
import argparse
import json
import os
import time

# tensorflow_recommenders 0.7.x needs Keras 2 (tf-keras); TF >= 2.16 defaults to Keras 3.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

EMBEDDING_DIM = 32


def load(data_dir):
    """(user ids, movie titles) of every rating, and every catalog title, as in tfds' movielens/100k."""
    titles = {}
    with open(os.path.join(data_dir, "u.item"), encoding="latin-1") as f:
        for line in f:
            fields = line.rstrip("\n").split("|")
            titles[fields[0]] = fields[1]
    users, movies = [], []
    with open(os.path.join(data_dir, "u.data"), encoding="latin-1") as f:
        for line in f:
            user, item, _rating, _time = line.split("\t")
            users.append(user)
            movies.append(titles[item])
    return np.array(users), np.array(movies), np.array(list(titles.values()))


class MovielensModel(tfrs.Model):
    """The tutorial's model; `train_metrics` chooses whether training steps compute FactorizedTopK."""

    def __init__(self, user_model, movie_model, task, train_metrics):
        super().__init__()
        self.movie_model = movie_model
        self.user_model = user_model
        self.task = task
        self.train_metrics = train_metrics

    def compute_loss(self, features, training=False):
        user_embeddings = self.user_model(features["user_id"])
        positive_movie_embeddings = self.movie_model(features["movie_title"])
        return self.task(user_embeddings, positive_movie_embeddings,
                         compute_metrics=self.train_metrics or not training)


class EpochTimes(tf.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.started)


def run(users, movies, catalog, train_metrics, epochs, seed):
    tf.keras.utils.set_random_seed(seed)
    ratings = tf.data.Dataset.from_tensor_slices({"user_id": users, "movie_title": movies})
    movie_ds = tf.data.Dataset.from_tensor_slices(catalog)
    shuffled = ratings.shuffle(100_000, seed=42, reshuffle_each_iteration=False)
    train = shuffled.take(80_000)
    test = shuffled.skip(80_000).take(20_000)
    unique_movie_titles = np.unique(catalog)
    unique_user_ids = np.unique(users)

    user_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=unique_user_ids, mask_token=None),
        tf.keras.layers.Embedding(len(unique_user_ids) + 1, EMBEDDING_DIM),
    ])
    movie_model = tf.keras.Sequential([
        tf.keras.layers.StringLookup(vocabulary=unique_movie_titles, mask_token=None),
        tf.keras.layers.Embedding(len(unique_movie_titles) + 1, EMBEDDING_DIM),
    ])
    metrics = tfrs.metrics.FactorizedTopK(candidates=movie_ds.batch(128).map(movie_model))
    task = tfrs.tasks.Retrieval(metrics=metrics)
    model = MovielensModel(user_model, movie_model, task, train_metrics)
    model.compile(optimizer=tf.keras.optimizers.Adagrad(learning_rate=0.1))

    cached_train = train.shuffle(100_000).batch(8192).cache()
    cached_test = test.batch(4096).cache()
    times = EpochTimes()
    started = time.perf_counter()
    history = model.fit(cached_train, epochs=epochs, callbacks=[times], verbose=0)
    fit_seconds = time.perf_counter() - started
    evaluation = model.evaluate(cached_test, return_dict=True, verbose=0)
    return {
        "engine": "tfrs", "tf": tf.__version__, "tfrs": tfrs.__version__.lstrip("v"),
        "train_metrics": train_metrics, "epochs": epochs,
        "fit_seconds": fit_seconds, "epoch_seconds": times.seconds,
        "loss": [float(x) for x in history.history["loss"]],
        "test_top_100": float(evaluation["factorized_top_k/top_100_categorical_accuracy"]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="MovieLens 100K directory (u.data, u.item)")
    p.add_argument("--train-metrics", choices=["off", "on", "both"], default="both")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()
    users, movies, catalog = load(a.data)
    modes = {"off": [False], "on": [True], "both": [False, True]}[a.train_metrics]
    for train_metrics in modes:
        print(json.dumps(run(users, movies, catalog, train_metrics, a.epochs, a.seed)), flush=True)


if __name__ == "__main__":
    main()
