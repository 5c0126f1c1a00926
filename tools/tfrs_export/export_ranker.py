#!/usr/bin/env python3
"""Export a trained TFRS DCN ranker into recsys's ranker layout (model/src/ranker.rs).

keras_reader.py reads the model (the TFRS DCN tutorial's attribute contract, see
README.md); this file writes config.json, weights.safetensors, vocab/{feature}.txt
and item_features.tsv. The model's `call` is not readable, so after writing, the
export is read back, scored in float64 numpy exactly as ranker.rs scores it, and
compared with `model(features)` on random requests, unknown values included; a
disagreement fails the export and nothing is left in the output directory.

Library use:   export(model, out_dir, spec, item_features=None) -> ExportReport
Command line:  see `--help`; the model comes from a factory function in a Python
               file (optionally with --weights), or from a Keras 2 SavedModel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

# keras_reader sets TF_USE_LEGACY_KERAS before TensorFlow is imported.
from keras_reader import (ExportError, Feature, Spec, is_int, probe_inputs, read_model,  # noqa: F401
                          text_value, tf, tfrs, warm_up)

OUR_FILES = ("config.json", "weights.safetensors", "item_features.tsv", "vocab")

# float32 TF against the float64 read-back, relative to max(1, |score|). The tutorial
# model at full size (x0 192-d, Dense 192, 192) differs by about 5e-7.
TOLERANCE = 1e-5


@dataclass
class ExportReport:
    """What was written and how well it agrees with the model."""

    out_dir: str
    config: dict
    items: int
    probes: int
    max_abs_diff: float
    notes: list[str]


# --------------------------------------------------------------------------- #
# The item feature table
# --------------------------------------------------------------------------- #


def _read_tsv(path: Path) -> dict[str, dict[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t")[0] != "item_id":
        raise ExportError(f"{path}: the header must start with item_id")
    header = lines[0].split("\t")
    rows = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != len(header):
            raise ExportError(f"{path}: line {number}: {len(fields)} fields, header has {len(header)}")
        rows[fields[0]] = dict(zip(header[1:], fields[1:]))
    return rows


def item_table(features: list[Feature], spec: Spec, item_features) -> tuple[list[str], list[str], list[str]]:
    """Header, lines and notes of item_features.tsv (ranker.rs load_item_features)."""
    columns = [f for f in features if f.side == "item"]
    id_feature = spec.item_id_feature
    if id_feature is not None and id_feature not in {f.model_name for f in columns}:
        raise ExportError(f"spec.item_id_feature {id_feature!r} is not an item-side feature")
    notes = []
    if item_features is None:
        if id_feature is None or [f.model_name for f in columns] != [id_feature]:
            raise ExportError(
                "item features other than the item id need a table: pass item_features "
                f"(a dict or TSV with item_id and {[f.model_name for f in columns]})")
        ids = next(f for f in columns if f.model_name == id_feature)
        source = {value: {} for value in ids.vocabulary if value != ids.mask_token}
        notes.append(f"item table: the {len(source)} values of the {id_feature} vocabulary")
    elif isinstance(item_features, (str, Path)):
        source = _read_tsv(Path(item_features))
    else:
        source = {k: dict(v) for k, v in item_features.items()}

    header = ["item_id"] + [f.name for f in columns]
    lines, seen, unused = [], set(), set()
    for raw_id, values in source.items():
        text = str(raw_id)
        if not (text.isascii() and text.isdigit()) or int(text) >= 2**64:
            raise ExportError(f"item id {raw_id!r} is not an unsigned 64-bit integer, as ranker.rs "
                              "needs; pass item_features mapping numeric ids to feature values")
        item_id = str(int(text))
        if item_id in seen:
            raise ExportError(f"item id {item_id} appears twice in the item table")
        seen.add(item_id)
        row = [item_id]
        for f in columns:
            if f.model_name in values:
                value = text_value(values[f.model_name], f"item {item_id} {f.model_name}")
                # ranker.rs matches text; IntegerLookup vocabulary lines are canonical decimals.
                row.append(str(int(value)) if f.integer and is_int(value) else value)
            elif f.model_name == id_feature:
                row.append(text)  # as the id feature's vocabulary spells it ("007" stays "007")
            else:
                raise ExportError(f"item {item_id} has no value for item feature {f.model_name!r}")
        unused |= set(values) - {f.model_name for f in columns}
        lines.append("\t".join(row))
    if unused:
        notes.append(f"item table: columns {sorted(unused)} are not model features, left out")
    for k, f in enumerate(columns, start=1):
        known = set(f.vocabulary)
        oov = sum(1 for line in lines if line.split("\t")[k] not in known)
        if oov:
            notes.append(f"item table: {oov} of {len(lines)} items have an out-of-vocabulary {f.name}")
    return header, lines, notes


# --------------------------------------------------------------------------- #
# Writing and reading back
# --------------------------------------------------------------------------- #


def _write(out: Path, spec: Spec, features, cfg, tensors, header, lines) -> dict:
    prefix = f"{spec.bundle_path.strip('/')}/" if spec.bundle_path.strip("/") else ""
    config = {
        "version": spec.version,
        "dcn": cfg,
        "features": [{"name": f.name, "side": f.side,
                      "vocabulary": f"{prefix}vocab/{f.name}.txt", "dim": f.dim} for f in features],
    }
    (out / "vocab").mkdir(parents=True)
    for f in features:
        (out / "vocab" / f"{f.name}.txt").write_text("".join(v + "\n" for v in f.vocabulary),
                                                     encoding="utf-8")
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    # One metadata key: safetensors writes several in no fixed order, and the export
    # should be byte-for-byte reproducible.
    save_file(tensors, str(out / "weights.safetensors"), metadata={
        "generator": f"tools/tfrs_export/export_ranker.py (TensorFlow {tf.__version__}, "
                     f"TFRS {tfrs.__version__})"})
    (out / "item_features.tsv").write_text("\t".join(header) + "\n"
                                           + "".join(line + "\n" for line in lines), encoding="utf-8")
    return config


NP_ACT = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh,
          "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v))}


def readback_scores(out: Path, requests: list[tuple[dict[str, str], list[dict[str, str]]]]) -> np.ndarray:
    """Scores from the written files alone, in float64, as ranker.rs computes them.

    `requests` are (user feature values, [item feature values]) by bundle name; a
    missing value is out of vocabulary. Kept independent of the model on purpose.
    """
    config = json.loads((out / "config.json").read_text())
    cfg = config["dcn"]
    w = {k: v.astype(np.float64) for k, v in load_file(str(out / "weights.safetensors")).items()}
    rows_of = {}
    for f in config["features"]:
        vocab = (out / "vocab" / f"{f['name']}.txt").read_text(encoding="utf-8").splitlines()
        rows_of[f["name"]] = {v: i + 1 for i, v in enumerate(vocab)}
    x0 = []
    for user, items in requests:
        for item in items:
            parts = []
            for f in config["features"]:
                value = (user if f["side"] == "user" else item).get(f["name"])
                parts.append(w[f"embedding.{f['name']}"][rows_of[f["name"]].get(value, 0)])
            x0.append(np.concatenate(parts))
    x0 = np.asarray(x0)
    x = x0
    for i in range(cfg["cross_layers"]):
        if cfg["projection_dim"] is None:
            prod = x @ w[f"cross.{i}.weight"].T
        else:
            prod = (x @ w[f"cross.{i}.u"].T) @ w[f"cross.{i}.v"].T
        if cfg["use_bias"]:
            prod = prod + w[f"cross.{i}.bias"]
        prod = NP_ACT[cfg["cross_activation"]](prod)
        if cfg["diag_scale"]:
            prod = prod + cfg["diag_scale"] * x
        x = x0 * prod + x
    deep = x if cfg["structure"] == "stacked" else x0
    for j in range(len(cfg["deep_units"])):
        deep = NP_ACT[cfg["deep_activation"]](deep @ w[f"deep.{j}.weight"].T + w[f"deep.{j}.bias"])
    if cfg["structure"] == "parallel":
        deep = np.concatenate([x, deep], axis=1) if cfg["deep_units"] else x
    raw = (deep @ w["head.weight"].T + w["head.bias"])[:, 0]
    return NP_ACT["sigmoid"](raw) if cfg["head"] == "logit" else raw


def _random_rows(features: list[Feature], lines: list[str], n: int, rng) -> list[dict[str, object]]:
    """`n` rows of model inputs: vocabulary values, the mask token, unknown values,
    and item values taken from the item table."""
    item_columns = [f for f in features if f.side == "item"]
    rows = []
    for r in range(n):
        row = {}
        table_row = lines[rng.integers(len(lines))].split("\t")[1:] if lines and r % 2 else None
        for f in features:
            if table_row is not None and f.side == "item":
                value = table_row[item_columns.index(f)]
            elif r == 0 or rng.random() < 0.15:
                value = f.oov_value
            else:
                value = f.vocabulary[rng.integers(len(f.vocabulary))]
            if f.integer:
                value = int(value) if is_int(value) else f.oov_value
            row[f.model_name] = value
        rows.append(row)
    return rows


def verify(model, out: Path, features: list[Feature], lines: list[str], probes: int, seed: int,
           tolerance: float = TOLERANCE) -> float:
    """Max |model(features) - read-back score| over random rows; raises above `tolerance`."""
    rng = np.random.default_rng(seed)
    rows = _random_rows(features, lines, probes, rng)
    expected = np.asarray(model(probe_inputs(features, rows))).reshape(-1).astype(np.float64)
    requests = []
    for row in rows:
        user = {f.name: str(row[f.model_name]) for f in features if f.side == "user"}
        item = {f.name: str(row[f.model_name]) for f in features if f.side == "item"}
        requests.append((user, [item]))
    got = readback_scores(out, requests)
    diff = np.abs(got - expected)
    worst = int(np.argmax(diff / np.maximum(1.0, np.abs(expected))))
    if diff[worst] > tolerance * max(1.0, abs(expected[worst])):
        raise ExportError(
            f"the export disagrees with model(features) by {diff[worst]:.3g} on {rows[worst]} "
            f"(model {expected[worst]:.6g}, export {got[worst]:.6g}). The model's call() does "
            "something the layers do not show: check the x0 order "
            f"{[f.model_name for f in features]}, that cross layer l is called as cross(x0, x_l) "
            "(not cross(x_l)), and spec.parallel_concat")
    return float(diff.max())


def export(model, out_dir, spec, item_features=None, *, probes: int = 256, seed: int = 0,
           tolerance: float = TOLERANCE, overwrite: bool = False) -> ExportReport:
    """Exports `model` into `out_dir` (config.json, weights.safetensors, vocab/, item_features.tsv).

    `spec` is a Spec or its JSON dict. `item_features` is None (the item-id vocabulary
    is the catalogue; only when the item id is the only item feature), a TSV path with
    header `item_id<TAB>feature...`, or {item_id: {feature: value}}. The export is
    checked against `model(features)` before it replaces `out_dir`.
    """
    spec = spec if isinstance(spec, Spec) else Spec.from_json(spec)
    out = Path(out_dir)
    if out.exists():
        strangers = sorted(p.name for p in out.iterdir() if p.name not in OUR_FILES)
        if strangers or (any(out.iterdir()) and not overwrite):
            raise ExportError(f"{out} is not empty ({strangers or 'an earlier export'}); "
                              "pass overwrite to replace an earlier export")
    features, cfg, tensors = read_model(model, spec)
    header, lines, notes = item_table(features, spec, item_features)
    if not any(f.name == "user_id" and f.side == "user" for f in features):
        notes.append("no user-side feature is named user_id: requests' user_id is not used "
                     "and user_out_of_vocabulary is never set (see spec.rename)")
    for f in features:
        if f.mask_token is not None:
            notes.append(f"{f.name}: mask token {f.mask_token!r} is vocabulary line 0 "
                         "(Keras index 0); out-of-vocabulary is row 0 (Keras index 1)")

    staging = out.with_name(out.name + ".export-tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        config = _write(staging, spec, features, cfg, tensors, header, lines)
        max_diff = verify(model, staging, features, lines, probes, seed, tolerance)
        out.mkdir(parents=True, exist_ok=True)
        for name in OUR_FILES:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            (staging / name).rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportReport(out_dir=str(out), config=config, items=len(lines), probes=probes,
                        max_abs_diff=max_diff, notes=notes)


# --------------------------------------------------------------------------- #
# Command line
# --------------------------------------------------------------------------- #


def load_factory(reference: str):
    """`path/to/file.py:function` → the function's return value."""
    path, _, name = reference.rpartition(":")
    if not path or not name:
        raise ExportError(f"--factory {reference!r}: expected path/to/file.py:function")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    if module_spec is None:
        raise ExportError(f"--factory: cannot import {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module
    module_spec.loader.exec_module(module)
    return getattr(module, name)()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--factory", help="path/to/file.py:function returning the model (the "
                        "user's model class, built with its vocabularies)")
    source.add_argument("--saved-model", help="a Keras 2 SavedModel directory (model.save(dir)); "
                        "x0 order must then be in the spec")
    p.add_argument("--weights", help="model.load_weights(...) after building (a checkpoint "
                   "prefix or .h5 from model.save_weights)")
    p.add_argument("--spec", required=True, help="JSON spec (README.md)")
    p.add_argument("--out", required=True, help="output directory, e.g. BUNDLE/ranker")
    p.add_argument("--item-features", help="TSV with header item_id<TAB>feature...")
    p.add_argument("--probes", type=int, default=256, help="random rows for the self-check")
    p.add_argument("--tolerance", type=float, default=TOLERANCE,
                   help="self-check tolerance, relative to max(1, |score|)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")
    a = p.parse_args(argv)
    try:
        spec = Spec.from_json(json.loads(Path(a.spec).read_text()))
        try:
            model = (tf.keras.models.load_model(a.saved_model) if a.saved_model
                     else load_factory(a.factory))
        except ExportError:
            raise
        except Exception as e:  # whatever loading or the user's factory raises
            raise ExportError(f"cannot load the model: {e}") from e
        if a.weights:
            warm_up(model)  # creates the variables the checkpoint restores into
            try:
                status = model.load_weights(a.weights)
                if status is not None:  # TF checkpoints; .h5 loading checks shapes itself
                    status.assert_existing_objects_matched()
            except Exception as e:  # shape mismatches, missing variables, unreadable files
                raise ExportError(f"--weights {a.weights} does not match the model: {e}") from e
        report = export(model, a.out, spec, a.item_features, probes=a.probes,
                        tolerance=a.tolerance, overwrite=a.overwrite)
    except ExportError as e:
        print(f"export_ranker: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report.__dict__, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
