#!/usr/bin/env python3
"""Tests of export_ranker.py: the shapes it exports, the ones it refuses, and its CLI paths.

Run from the repository root (about a minute on CPU):

    TF_USE_LEGACY_KERAS=1 target/tfrs-venv/bin/python -m unittest tools/tfrs_export/test_export.py

The Rust side (model/tests/tfrs_export.rs) checks exported rankers against TFRS's
scores; these tests check the exporter's decisions: each refusal names the layer or
setting, and a refused export leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import unittest
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402

import export_ranker as er  # noqa: E402
import tutorial_model as tm  # noqa: E402

HERE = Path(__file__).resolve().parent
VOCAB = tm.synthetic_vocabularies()
FEATURES = tm.STR_FEATURES + tm.INT_FEATURES
SPEC = {"version": "test", "item_id_feature": "movie_id",
        "features": {f: "item" if f.startswith("movie") else "user" for f in FEATURES + ["movie_genre"]}}


def spec(**changes):
    s = json.loads(json.dumps(SPEC))
    s["features"] = {f: s["features"][f] for f in changes.pop("features", FEATURES)}
    s.update(changes)
    return s


def pipeline(name, lookup=None, extra=(), dim=4):
    vocabulary = VOCAB[name]
    if lookup is None:
        kind = tf.keras.layers.IntegerLookup if name in tm.INT_FEATURES else tf.keras.layers.StringLookup
        lookup = kind(vocabulary=vocabulary, mask_token=None)
    # Embeddings of unit scale, so a wrong reading of the model changes scores visibly.
    embedding = tf.keras.layers.Embedding(len(vocabulary) + 3, dim,
                                          embeddings_initializer=tf.keras.initializers.RandomNormal())
    return tf.keras.Sequential([lookup, embedding, *extra])


class Custom(tfrs.Model):
    """A tutorial-contract model assembled from parts, with a choice of call()."""

    def __init__(self, *, pipelines=None, cross=None, deep=(8,), deep_activation="relu",
                 head=None, extra=None, chain="x0_x", parallel=None):
        super().__init__()
        self._all_features = list(FEATURES)
        self._embeddings = {f: pipeline(f) for f in FEATURES}
        self._embeddings.update(pipelines or {})
        self._cross_layers = list(cross if cross is not None else [tfrs.layers.dcn.Cross()])
        self._deep_layers = [tf.keras.layers.Dense(u, activation=deep_activation) for u in deep]
        self._logit_layer = head or tf.keras.layers.Dense(1)
        if extra is not None:
            self._extra = extra
        self._chain, self._parallel = chain, parallel

    def call(self, features):
        x0 = tf.concat([self._embeddings[f](features[f]) for f in self._all_features], axis=1)
        if hasattr(self, "_extra"):
            x0 = self._extra(x0)
        x = x0
        for cross in self._cross_layers:
            if isinstance(cross, tfrs.layers.feature_interaction.MultiLayerDCN):
                x = cross(x0)
            else:
                x = cross(x0, x) if self._chain == "x0_x" else cross(x)
        h = x0 if self._parallel else x
        for dense in self._deep_layers:
            h = dense(h)
        if self._parallel == "cross_deep":
            h = tf.concat([x, h], axis=1)
        elif self._parallel == "deep_cross":
            h = tf.concat([h, x], axis=1)
        return self._logit_layer(h)


class ExportTest(unittest.TestCase):
    def setUp(self):
        tf.keras.utils.set_random_seed(3)
        self.tmp = tempfile.TemporaryDirectory()
        self.out = Path(self.tmp.name) / "bundle" / "ranker"

    def tearDown(self):
        self.tmp.cleanup()

    def export(self, model, s=None, items=None, **kw):
        return er.export(model, self.out, s or spec(), items, probes=64, **kw)

    def refuses(self, model, *needles, s=None, items=None):
        with self.assertRaises(er.ExportError) as caught:
            self.export(model, s, items)
        for needle in needles:
            self.assertIn(needle, str(caught.exception))
        self.assertFalse(self.out.exists(), "a refused export must leave nothing behind")
        return str(caught.exception)

    # --- exported shapes ------------------------------------------------------

    def test_tutorial_model_exports(self):
        report = self.export(tm.DCN(VOCAB, deep_layer_sizes=(8, 4), embedding_dimension=4))
        self.assertLess(report.max_abs_diff, 1e-5)
        dcn = report.config["dcn"]
        self.assertEqual((dcn["structure"], dcn["cross_layers"], dcn["projection_dim"]),
                         ("stacked", 1, None))
        vocab = (self.out / "vocab" / "movie_id.txt").read_text().splitlines()
        self.assertEqual(vocab, [str(v) for v in VOCAB["movie_id"]])
        self.assertEqual(report.config["features"][0]["vocabulary"], "ranker/vocab/movie_id.txt")

    def test_tutorial_without_cross_layer(self):
        report = self.export(tm.DCN(VOCAB, use_cross_layer=False, deep_layer_sizes=(8,),
                                    embedding_dimension=4))
        self.assertEqual(report.config["dcn"]["cross_layers"], 0)

    def test_low_rank_stack_with_diag_scale_and_relu(self):
        cross = [tfrs.layers.dcn.Cross(projection_dim=2, diag_scale=0.3, preactivation="relu",
                                       bias_initializer="random_uniform") for _ in range(3)]
        report = self.export(Custom(cross=cross))
        dcn = report.config["dcn"]
        self.assertEqual((dcn["cross_layers"], dcn["projection_dim"], dcn["cross_activation"]),
                         (3, 2, "relu"))

    def test_multi_layer_dcn(self):
        multi = tfrs.layers.feature_interaction.MultiLayerDCN(projection_dim=2, num_layers=2)
        report = self.export(Custom(cross=[multi]))
        self.assertEqual((report.config["dcn"]["cross_layers"], report.config["dcn"]["projection_dim"]),
                         (2, 2))

    def test_parallel_in_either_concat_order(self):
        report = self.export(Custom(parallel="cross_deep"))
        self.assertEqual(report.config["dcn"]["structure"], "parallel")
        self.export(Custom(parallel="deep_cross"), spec(parallel_concat="deep_cross"), overwrite=True)
        self.tmp.cleanup()
        self.refuses(Custom(parallel="deep_cross"), "disagrees with model(features)",
                     "spec.parallel_concat")

    def test_mask_tokens_keep_their_row(self):
        pipelines = {
            "user_zip_code": pipeline("user_zip_code", tf.keras.layers.StringLookup(
                vocabulary=VOCAB["user_zip_code"], mask_token="")),
            "user_gender": pipeline("user_gender", tf.keras.layers.IntegerLookup(
                vocabulary=[1, 2], mask_token=0)),
        }
        report = self.export(Custom(pipelines=pipelines))
        self.assertEqual((self.out / "vocab" / "user_zip_code.txt").read_text().split("\n")[0], "")
        self.assertEqual((self.out / "vocab" / "user_gender.txt").read_text().splitlines(),
                         ["0", "1", "2"])
        self.assertTrue(any("mask token" in n for n in report.notes))

    def test_item_table_from_tsv_and_dict(self):
        model = Custom(pipelines={"movie_genre": pipeline("movie_genre")})
        model._all_features.insert(1, "movie_genre")
        tsv = Path(self.tmp.name) / "items.tsv"
        tsv.write_text("item_id\tmovie_genre\ttitle\n1\tdrama\tA\n42\tnoir\tB\n")
        report = self.export(model, spec(features=FEATURES + ["movie_genre"]), tsv)
        self.assertEqual((self.out / "item_features.tsv").read_text(),
                         "item_id\tmovie_id\tmovie_genre\n1\t1\tdrama\n42\t42\tnoir\n")
        self.assertTrue(any("['title']" in n for n in report.notes), report.notes)
        self.refuses_later = self.export(model, spec(features=FEATURES + ["movie_genre"]),
                                         {3: {"movie_genre": "drama"}}, overwrite=True)
        self.assertEqual(self.refuses_later.items, 1)

    def test_rename_to_user_id(self):
        report = self.export(tm.DCN(VOCAB, deep_layer_sizes=(4,), embedding_dimension=2),
                             spec(rename={"user_id": "uid"}))
        self.assertIn("uid", [f["name"] for f in report.config["features"]])
        self.assertTrue(any("no user-side feature is named user_id" in n for n in report.notes))

    # --- refusals -------------------------------------------------------------

    def test_refuses_normalization_layer(self):
        self.refuses(Custom(extra=tf.keras.layers.Normalization(mean=0.0, variance=1.0)),
                     "'normalization' (Normalization)", "not part of the model shape")

    def test_refuses_other_interaction_layers(self):
        class MixtureOfLowRankCross(tf.keras.layers.Layer):  # DCN-Mix stand-in
            def call(self, x0, x=None):
                return x0

        self.refuses(Custom(cross=[MixtureOfLowRankCross(name="dcn_mix")]),
                     "model._cross_layers[0] is 'dcn_mix' (MixtureOfLowRankCross)",
                     "expected tfrs.layers.dcn.Cross")

    def test_refuses_hashing_and_extra_pipeline_layers(self):
        hashing = tf.keras.Sequential([tf.keras.layers.Hashing(num_bins=8),
                                       tf.keras.layers.Embedding(8, 4)])
        self.refuses(Custom(pipelines={"user_zip_code": hashing}),
                     "model._embeddings['user_zip_code']", "(Hashing)",
                     "expected StringLookup or IntegerLookup")
        flatten = pipeline("user_id", extra=[tf.keras.layers.Flatten()])
        self.refuses(Custom(pipelines={"user_id": flatten}), "(Flatten)",
                     "nothing after the Embedding")

    def test_refuses_two_oov_indices(self):
        lookup = tf.keras.layers.StringLookup(vocabulary=VOCAB["user_id"], num_oov_indices=2)
        self.refuses(Custom(pipelines={"user_id": pipeline("user_id", lookup)}),
                     "num_oov_indices=2")

    def test_refuses_unsupported_activations_and_heads(self):
        self.refuses(Custom(deep_activation="gelu"), "activation 'gelu'")
        self.refuses(Custom(head=tf.keras.layers.Dense(1, activation="softplus")),
                     "model._logit_layer", "softplus")

    def test_refuses_mixed_cross_layers(self):
        cross = [tfrs.layers.dcn.Cross(projection_dim=2), tfrs.layers.dcn.Cross()]
        self.refuses(Custom(cross=cross), "cross layers differ in projection_dim")

    def test_refuses_cross_chained_without_x0(self):
        # x = cross(x) twice is not DCN-V2's x_{l+1} = cross(x0, x_l); only the numbers show it.
        cross = [tfrs.layers.dcn.Cross(kernel_initializer="glorot_uniform") for _ in range(2)]
        self.refuses(Custom(cross=cross, chain="x_only"), "disagrees with model(features)",
                     "cross(x0, x_l)")

    def test_refuses_incomplete_spec(self):
        model = tm.DCN(VOCAB, deep_layer_sizes=(4,), embedding_dimension=2)
        self.refuses(model, "missing ['user_gender']",
                     s=spec(features=[f for f in FEATURES if f != "user_gender"]))
        with self.assertRaises(er.ExportError):
            er.Spec.from_json({"version": "v", "features": {"user_id": "person"}})

    def test_refuses_item_ids_that_are_not_integers(self):
        vocab = dict(VOCAB, movie_id=np.array(["m1", "m2"]))
        self.refuses(tm.DCN(vocab, deep_layer_sizes=(4,), embedding_dimension=2),
                     "'m1' is not an unsigned 64-bit integer")

    # --- loading paths --------------------------------------------------------

    def test_saved_model_and_checkpoint_export_the_same_bytes(self):
        def build():
            tf.keras.utils.set_random_seed(5)
            return tm.DCN(VOCAB, deep_layer_sizes=(4,), embedding_dimension=2)

        model = build()
        tm.train(model, tm.synthetic_ratings(VOCAB, FEATURES, 64, seed=5), steps=3)
        self.export(model)
        reference = {p.relative_to(self.out): p.read_bytes() for p in self.out.rglob("*") if p.is_file()}

        saved = Path(self.tmp.name) / "saved"
        model.save(saved)
        spec_file = Path(self.tmp.name) / "spec.json"
        spec_file.write_text(json.dumps(spec()))
        out2 = Path(self.tmp.name) / "from_saved"
        loaded = tf.keras.models.load_model(saved)
        with self.assertRaises(er.ExportError) as caught:
            er.export(loaded, out2, spec())
        self.assertIn("give spec.x0_order", str(caught.exception))
        spec_file.write_text(json.dumps(spec(x0_order=FEATURES)))
        self.assertEqual(er.main(["--saved-model", str(saved), "--spec", str(spec_file),
                                  "--out", str(out2), "--probes", "64"]), 0)

        weights = Path(self.tmp.name) / "ckpt" / "weights"
        model.save_weights(str(weights))
        factory = Path(self.tmp.name) / "factory.py"
        factory.write_text(
            f"import sys; sys.path.insert(0, {str(HERE)!r})\n"
            "import tensorflow as tf, tutorial_model as tm\n"
            "def build():\n"
            "    return tm.DCN(tm.synthetic_vocabularies(), deep_layer_sizes=(4,), embedding_dimension=2)\n")
        out3 = Path(self.tmp.name) / "from_checkpoint"
        self.assertEqual(er.main(["--factory", f"{factory}:build", "--weights", str(weights),
                                  "--spec", str(spec_file), "--out", str(out3), "--probes", "64"]), 0)
        # A checkpoint of another shape is refused with a message, not a traceback.
        factory.write_text(factory.read_text().replace("embedding_dimension=2", "embedding_dimension=3"))
        self.assertEqual(er.main(["--factory", f"{factory}:build", "--weights", str(weights),
                                  "--spec", str(spec_file), "--out", str(out3) + "-bad"]), 1)
        self.assertFalse(Path(str(out3) + "-bad").exists())
        for out in (out2, out3):
            got = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
            self.assertEqual(got, reference, out)


if __name__ == "__main__":
    unittest.main()
