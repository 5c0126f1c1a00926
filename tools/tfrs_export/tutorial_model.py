"""The ranker of the TFRS DCN tutorial, and variants of it, on tiny synthetic data.

`DCN` is the model class of https://www.tensorflow.org/recommenders/examples/dcn,
kept as the tutorial writes it (only `embedding_dimension` and the vocabularies are
arguments). `VariantDCN` extends it with what the tutorial discusses but does not
build: a stack of cross layers (`_cross_layers`), the parallel structure, a sigmoid
head, extra item-side features and lookups with a mask token. Both follow the
attribute contract `export_ranker.py` reads.

`build_demo()` is a factory for the exporter's CLI:

    export_ranker.py --factory tools/tfrs_export/tutorial_model.py:build_demo ...

It builds the tutorial model and trains it for a few steps on synthetic ratings.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

STR_FEATURES = ["movie_id", "user_id", "user_zip_code", "user_occupation_text"]
INT_FEATURES = ["user_gender", "bucketized_user_age"]


class DCN(tfrs.Model):
    """The tutorial's ranker: lookups + embeddings, one Cross, a deep MLP, Dense(1)."""

    def __init__(self, vocabularies, use_cross_layer=True, deep_layer_sizes=(192, 192),
                 projection_dim=None, embedding_dimension=32):
        super().__init__()
        self.embedding_dimension = embedding_dimension
        str_features = list(STR_FEATURES)
        int_features = list(INT_FEATURES)
        self._all_features = str_features + int_features
        self._embeddings = {}
        for feature_name in str_features:
            vocabulary = vocabularies[feature_name]
            self._embeddings[feature_name] = tf.keras.Sequential([
                tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token=None),
                tf.keras.layers.Embedding(len(vocabulary) + 1, self.embedding_dimension),
            ])
        for feature_name in int_features:
            vocabulary = vocabularies[feature_name]
            self._embeddings[feature_name] = tf.keras.Sequential([
                # The tutorial's `mask_value=None` is spelled `mask_token=None` in tf-keras 2.21.
                tf.keras.layers.IntegerLookup(vocabulary=vocabulary, mask_token=None),
                tf.keras.layers.Embedding(len(vocabulary) + 1, self.embedding_dimension),
            ])
        if use_cross_layer:
            self._cross_layer = tfrs.layers.dcn.Cross(
                projection_dim=projection_dim, kernel_initializer="glorot_uniform")
        else:
            self._cross_layer = None
        self._deep_layers = [tf.keras.layers.Dense(size, activation="relu")
                             for size in deep_layer_sizes]
        self._logit_layer = tf.keras.layers.Dense(1)
        self.task = tfrs.tasks.Ranking(
            loss=tf.keras.losses.MeanSquaredError(),
            metrics=[tf.keras.metrics.RootMeanSquaredError("RMSE")],
        )

    def call(self, features):
        embeddings = [self._embeddings[name](features[name]) for name in self._all_features]
        x = tf.concat(embeddings, axis=1)
        if self._cross_layer is not None:
            x = self._cross_layer(x)
        for deep_layer in self._deep_layers:
            x = deep_layer(x)
        return self._logit_layer(x)

    def compute_loss(self, features, training=False):
        labels = features.pop("user_rating")
        scores = self(features)
        return self.task(labels=labels, predictions=scores)


class VariantDCN(DCN):
    """The tutorial model with a cross stack, optional parallel structure and more features.

    `cross_layers` Cross layers (`x_{l+1} = cross_l(x0, x_l)`), each with
    `projection_dim`, `diag_scale`, `use_bias`; `parallel` concatenates
    `[cross(x0), deep(x0)]` before the head; `head_activation` is the head Dense's
    activation; `item_str_features` are extra string item features placed after
    movie_id in x0; `mask_tokens` gives a lookup's mask token by feature.
    """

    def __init__(self, vocabularies, *, cross_layers=2, projection_dim=None, diag_scale=0.0,
                 use_bias=True, deep_layer_sizes=(8,), parallel=False, head_activation=None,
                 item_str_features=(), mask_tokens=None, embedding_dimension=4):
        super().__init__(vocabularies, use_cross_layer=False, deep_layer_sizes=deep_layer_sizes,
                         embedding_dimension=embedding_dimension)
        mask_tokens = mask_tokens or {}
        self._all_features = ["movie_id", *item_str_features, *STR_FEATURES[1:], *INT_FEATURES]
        for name in [*item_str_features, *mask_tokens]:
            vocabulary = vocabularies[name]
            mask = mask_tokens.get(name)
            lookup = (tf.keras.layers.IntegerLookup if name in INT_FEATURES
                      else tf.keras.layers.StringLookup)
            self._embeddings[name] = tf.keras.Sequential([
                lookup(vocabulary=vocabulary, mask_token=mask),
                # A mask token takes one more row (index 0; OOV moves to 1).
                tf.keras.layers.Embedding(len(vocabulary) + 1 + (mask is not None),
                                          self.embedding_dimension),
            ])
        self._cross_layer = None
        self._cross_layers = [
            tfrs.layers.dcn.Cross(projection_dim=projection_dim, diag_scale=diag_scale,
                                  use_bias=use_bias, kernel_initializer="glorot_uniform",
                                  bias_initializer=tf.keras.initializers.RandomUniform(-0.1, 0.1))
            for _ in range(cross_layers)
        ]
        self._parallel = parallel
        self._logit_layer = tf.keras.layers.Dense(1, activation=head_activation)

    def call(self, features):
        x0 = tf.concat([self._embeddings[name](features[name]) for name in self._all_features],
                       axis=1)
        x = x0
        for cross in self._cross_layers:
            x = cross(x0, x)
        deep = x0 if self._parallel else x
        for deep_layer in self._deep_layers:
            deep = deep_layer(deep)
        if self._parallel:
            deep = tf.concat([x, deep], axis=1) if self._deep_layers else x
        return self._logit_layer(deep)


def synthetic_vocabularies(users=5, movies=8, zips=4, occupations=3):
    """Small vocabularies shaped like MovieLens's (movie ids are decimal strings)."""
    return {
        "movie_id": np.array([str(i) for i in range(1, movies + 1)]),
        "user_id": np.array([str(i) for i in range(1, users + 1)]),
        "user_zip_code": np.array([f"{10000 + 7 * i}" for i in range(zips)]),
        "user_occupation_text": np.array(["doctor", "engineer", "writer", "artist"][:occupations]),
        "user_gender": np.array([0, 1], dtype=np.int64),
        "bucketized_user_age": np.array([18, 25, 35, 45], dtype=np.int64),
        "movie_genre": np.array(["drama", "comedy", "horror"]),
    }


def synthetic_ratings(vocabularies, features, n, seed, oov_rate=0.1):
    """`n` rows of random feature values (some out of vocabulary) and ratings 1..5."""
    rng = np.random.default_rng(seed)
    rows = {}
    for name in features:
        vocabulary = vocabularies[name]
        values = rng.choice(vocabulary, size=n)
        oov = rng.random(n) < oov_rate
        if vocabulary.dtype.kind in "iu":
            values = np.where(oov, 999, values).astype(np.int64)
        else:
            values = np.where(oov, "unseen", values)
        rows[name] = values
    rows["user_rating"] = rng.integers(1, 6, size=n).astype(np.float32)
    return rows


def train(model, rows, steps, batch_size=32, learning_rate=0.05, binary=False):
    """A few Adam steps, as the tutorial trains (ratings, MSE), so weights are not the init."""
    rows = dict(rows)
    if binary:
        rows["user_rating"] = (rows["user_rating"] >= 4).astype(np.float32)
    data = tf.data.Dataset.from_tensor_slices(rows).repeat().batch(batch_size)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate))
    model.fit(data.take(steps), epochs=1, verbose=0)
    return model


def build_demo():
    """The tutorial model (32-d embeddings, Dense 192, 192) trained 20 steps on synthetic data."""
    tf.keras.utils.set_random_seed(7)
    vocabularies = synthetic_vocabularies(users=50, movies=80, zips=20, occupations=4)
    model = DCN(vocabularies, deep_layer_sizes=(192, 192))
    rows = synthetic_ratings(vocabularies, STR_FEATURES + INT_FEATURES, 640, seed=7)
    return train(model, rows, steps=20, learning_rate=0.001)
