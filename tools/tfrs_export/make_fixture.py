#!/usr/bin/env python3
"""Export fixtures: TFRS DCN rankers exported with export_ranker.py, and TFRS's own scores.

Writes, relative to the repository root,

    model/tests/fixtures/tfrs_export/{tutorial,variant}/ranker/
        config.json, weights.safetensors, vocab/*.txt, item_features.tsv
    model/tests/fixtures/tfrs_export/expected.json

`tutorial` is the DCN tutorial's model (one full-rank Cross, stacked, Dense 16, 8,
Dense(1)); `variant` has two low-rank Cross layers with diag_scale, the parallel
structure, a sigmoid head, a second item feature (movie_genre) and a lookup with a
mask token. Both are trained for a few steps on synthetic ratings, exported, and
scored by TFRS (`model(features)`) on requests that include an unknown user id,
unknown and missing feature values, the mask token and items the model never saw.
model/tests/tfrs_export.rs loads each ranker with `Ranker::load` and must reproduce
the scores within 1e-5.

Run from the repository root (see tools/tfrs_export/README.md):

    TF_USE_LEGACY_KERAS=1 target/tfrs-venv/bin/python tools/tfrs_export/make_fixture.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402
import tf_keras  # noqa: E402

import export_ranker  # noqa: E402
import tutorial_model as tm  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT = REPO_ROOT / "model" / "tests" / "fixtures" / "tfrs_export"
TOLERANCE = 1e-5
SIDES = {"movie_id": "item", "movie_genre": "item", "user_id": "user", "user_zip_code": "user",
         "user_occupation_text": "user", "user_gender": "user", "bucketized_user_age": "user"}
# What a request leaves out: the model gets a value no vocabulary holds, as ranker.rs
# uses the out-of-vocabulary row for a missing feature.
MISSING = {"str": "[missing]", "int": -99}


def tutorial():
    tf.keras.utils.set_random_seed(11)
    vocabularies = tm.synthetic_vocabularies()
    model = tm.DCN(vocabularies, deep_layer_sizes=(16, 8), embedding_dimension=4)
    rows = tm.synthetic_ratings(vocabularies, model._all_features, 256, seed=11)
    tm.train(model, rows, steps=30)
    items = None  # the movie_id vocabulary is the catalogue
    return model, items, "DCN tutorial model: 6 features x 4-d, Cross (full rank), Dense 16, 8 relu, Dense(1)"


def variant():
    tf.keras.utils.set_random_seed(12)
    vocabularies = tm.synthetic_vocabularies()
    model = tm.VariantDCN(vocabularies, cross_layers=2, projection_dim=3, diag_scale=0.5,
                          deep_layer_sizes=(8,), parallel=True, head_activation="sigmoid",
                          item_str_features=("movie_genre",),
                          mask_tokens={"user_zip_code": "[MASK]"})
    rows = tm.synthetic_ratings(vocabularies, model._all_features, 256, seed=12)
    tm.train(model, rows, steps=30, binary=True)
    genres = vocabularies["movie_genre"]
    items = {int(m): {"movie_genre": str(genres[i % len(genres)])}
             for i, m in enumerate(vocabularies["movie_id"])}
    items[7] = {"movie_genre": "western"}  # a genre the model never saw
    items[99] = {"movie_genre": "drama"}  # a catalogue movie the model never saw
    return model, items, ("2 x Cross (projection_dim 3, diag_scale 0.5), parallel with Dense 8 relu, "
                          "sigmoid head; movie_genre item feature; user_zip_code has mask token [MASK]")


def requests(name: str) -> list[dict]:
    known = {"user_zip_code": "10007", "user_occupation_text": "writer", "user_gender": "1",
             "bucketized_user_age": "25"}
    catalogue = list(range(1, 9)) + ([99] if name == "variant" else [])
    out = [
        {"name": "known user, every item", "user_id": "3", "user_features": known,
         "items": catalogue, "allow_unknown_items": False},
        {"name": "unknown user id", "user_id": "404", "user_features": known,
         "items": [2, 5, 7], "allow_unknown_items": False},
        {"name": "unknown zip, occupation and age, no gender", "user_id": "1",
         "user_features": {"user_zip_code": "99999", "user_occupation_text": "astronaut",
                           "bucketized_user_age": "99"},
         "items": [1, 8, 4], "allow_unknown_items": False},
        {"name": "no user features at all", "user_id": "5", "user_features": {},
         "items": [6, 3], "allow_unknown_items": False},
        {"name": "items without features, allowed", "user_id": "2", "user_features": known,
         "items": [12345, 1, 777], "allow_unknown_items": True},
    ]
    if name == "variant":
        out.append({"name": "mask token as zip code", "user_id": "4",
                    "user_features": dict(known, user_zip_code="[MASK]"),
                    "items": [99, 7, 3], "allow_unknown_items": False})
    return out


def tfrs_scores(model, request: dict, items: dict) -> tuple[list[float], bool]:
    """TFRS's scores for a request, from raw feature values, and whether the user is unknown."""
    n = len(request["items"])
    integer = {"user_gender", "bucketized_user_age"}
    user = dict(request["user_features"], user_id=request["user_id"])
    features = {}
    for name in model._all_features:
        if SIDES[name] == "user":
            values = [user.get(name)] * n
        else:
            values = []
            for item_id in request["items"]:
                row = items.get(item_id)
                if name == "movie_id":
                    values.append(str(item_id) if row is not None else None)
                else:
                    values.append(None if row is None else row[name])
        if name in integer:
            features[name] = tf.constant([MISSING["int"] if v is None else int(v) for v in values],
                                         dtype=tf.int64)
        else:
            features[name] = tf.constant([MISSING["str"] if v is None else v for v in values])
    scores = model(features).numpy().reshape(-1)
    vocabulary = model._embeddings["user_id"].layers[0].get_vocabulary()
    return [float(s) for s in scores], request["user_id"] not in vocabulary


def main() -> None:
    tf.config.experimental.enable_op_determinism()
    print(f"TensorFlow {tf.__version__}, tf-keras {tf_keras.__version__}, TFRS {tfrs.__version__}, "
          f"numpy {np.__version__}")
    models = []
    for name, build in (("tutorial", tutorial), ("variant", variant)):
        model, items, description = build()
        spec = {"version": f"tfrs-export-fixture-{name}", "item_id_feature": "movie_id",
                "features": {f: SIDES[f] for f in model._all_features}}
        report = export_ranker.export(model, OUT / name / "ranker", spec, items, overwrite=True)
        # With `items=None` the exporter takes the movie_id vocabulary as the catalogue.
        table = items if items is not None else {
            int(m): {} for m in model._embeddings["movie_id"].layers[0].get_vocabulary()[1:]}
        cases = []
        for request in requests(name):
            scores, oov = tfrs_scores(model, request, table)
            cases.append(dict(request, scores=scores, user_out_of_vocabulary=oov))
        models.append({"name": name, "description": description,
                       "bundle_dir": name, "config": "ranker/config.json",
                       "weights": "ranker/weights.safetensors",
                       "item_features": "ranker/item_features.tsv",
                       "dcn": report.config["dcn"],
                       "exporter_self_check_max_abs_diff": report.max_abs_diff,
                       "requests": cases})
        print(f"  {name}: {report.items} items, self-check max|diff| {report.max_abs_diff:.2e} "
              f"over {report.probes} rows; {report.config['dcn']}")
        for note in report.notes:
            print(f"    note: {note}")
    doc = {
        "description": "TFRS DCN rankers exported by tools/tfrs_export/export_ranker.py and the "
                       "scores TFRS computes for them (model(features)). See tools/tfrs_export/README.md.",
        "generator": "tools/tfrs_export/make_fixture.py",
        "versions": {"python": sys.version.split()[0], "tensorflow": tf.__version__,
                     "tf_keras": tf_keras.__version__, "tensorflow_recommenders": tfrs.__version__,
                     "numpy": np.__version__},
        "tolerance": TOLERANCE,
        "missing_feature": "a feature absent from user_features (or an item absent from the item "
                           f"table) was given to TFRS as {MISSING['str']!r} / {MISSING['int']}, "
                           "which no vocabulary holds",
        "models": models,
    }
    (OUT / "expected.json").write_text(json.dumps(doc, indent=1) + "\n")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({size} bytes)")


if __name__ == "__main__":
    main()
