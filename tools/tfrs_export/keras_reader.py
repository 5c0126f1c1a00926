"""Reads a trained TFRS DCN ranker (Keras 2) into the tensors of recsys's ranker layout.

The model is read through the attribute contract of the TFRS DCN tutorial's model
class (https://www.tensorflow.org/recommenders/examples/dcn); see README.md:

    model._embeddings    {feature: Sequential([StringLookup | IntegerLookup, Embedding])}
    model._all_features  x0 order (optional: else spec "x0_order")
    model._cross_layer   tfrs.layers.dcn.Cross | MultiLayerDCN | None, or
    model._cross_layers  a list of them, applied as x_{l+1} = cross_l(x0, x_l)
    model._deep_layers   [Dense | Dropout, ...]
    model._logit_layer   Dense(1), linear (regression) or sigmoid (logit)

Every other layer the model tracks is refused, by name, except TFRS tasks and Keras
metrics. The stacked or parallel structure follows from the head's input width.
Weights come out in candle's (out, in) layout under the names of model/src/dcn_v2.rs;
embedding rows are reordered so row 0 is out of vocabulary and row i + 1 is
vocabulary line i (ranker.rs). export_ranker.py writes and checks them.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

# TFRS 0.7.x is written against Keras 2; this must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402  (registers Cross for SavedModel loading)
from tensorflow_recommenders.layers.feature_interaction import Cross, MultiLayerDCN  # noqa: E402

if not tf.keras.__name__.startswith("tf_keras"):
    sys.exit(f"tf.keras is {tf.keras.__name__} (Keras 3?); TFRS needs Keras 2: "
             "install tf-keras and set TF_USE_LEGACY_KERAS=1")

SIDES = ("user", "item")
# Activations ranker.rs implements (dcn_v2::Activation), by Keras name.
ACTIVATIONS = {"linear": "linear", "relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


class ExportError(ValueError):
    """The model or the inputs do not fit the ranker layout; the message says where."""


@dataclass
class Spec:
    """What the model cannot say about itself. JSON keys are the field names,
    with `features` holding `sides` (see README.md)."""

    version: str
    sides: dict[str, str]
    x0_order: list[str] | None = None
    rename: dict[str, str] = field(default_factory=dict)
    item_id_feature: str | None = None
    parallel_concat: str = "cross_deep"
    bundle_path: str = "ranker"

    @classmethod
    def from_json(cls, data: dict) -> "Spec":
        data = dict(data)
        known = {"version", "features", "x0_order", "rename", "item_id_feature",
                 "parallel_concat", "bundle_path"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ExportError(f"spec: unknown keys {unknown}; known: {sorted(known)}")
        for key in ("version", "features"):
            if key not in data:
                raise ExportError(f"spec: missing {key!r}")
        sides = data.pop("features")
        if not isinstance(sides, dict):
            raise ExportError('spec: "features" must map each feature to "user" or "item"')
        spec = cls(sides=sides, **data)
        if not isinstance(spec.version, str) or not spec.version:
            raise ExportError('spec: "version" must be a non-empty string')
        bad = {k: v for k, v in spec.sides.items() if v not in SIDES}
        if bad:
            raise ExportError(f"spec: features {bad} must be 'user' or 'item'")
        if spec.parallel_concat not in ("cross_deep", "deep_cross"):
            raise ExportError("spec: parallel_concat must be 'cross_deep' or 'deep_cross'")
        return spec


@dataclass
class Feature:
    """One x0 block: model name, bundle name, vocabulary and the reordered table."""

    model_name: str
    name: str
    side: str
    integer: bool
    vocabulary: list[str]  # line i is row i + 1
    table: np.ndarray  # [len(vocabulary) + 1, dim], row 0 = out of vocabulary
    mask_token: str | None
    oov_value: object  # a model input the lookup maps to its OOV index

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])


# --------------------------------------------------------------------------- #
# Reading the model
# --------------------------------------------------------------------------- #


def _describe(layer) -> str:
    return f"'{layer.name}' ({type(layer).__name__})"


def _activation(fn, where: str) -> str:
    name = tf.keras.activations.serialize(fn) if fn is not None else "linear"
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ExportError(f"{where} has activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def _check_float32(layer, where: str) -> None:
    if layer.compute_dtype != "float32":
        raise ExportError(f"{where} {_describe(layer)} computes in {layer.compute_dtype}; "
                          "only float32 models are exported (ranker.rs scores in float32)")


def text_value(value, where: str) -> str:
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    if any(c in text for c in "\t\n\r"):
        raise ExportError(f"{where}: value {text!r} has a tab or line break, which the "
                          "vocabulary and item files cannot hold")
    return text


def _read_feature(model_name: str, pipeline, name: str, side: str) -> Feature:
    where = f"model._embeddings[{model_name!r}]"
    if not isinstance(pipeline, tf.keras.Sequential):
        raise ExportError(f"{where} is {_describe(pipeline)}; expected a Sequential of "
                          "StringLookup or IntegerLookup, then Embedding")
    layers = list(pipeline.layers)
    kinds = (tf.keras.layers.StringLookup, tf.keras.layers.IntegerLookup)
    for position, layer in enumerate(layers):
        expected = kinds if position == 0 else (tf.keras.layers.Embedding,)
        if position > 1 or not isinstance(layer, expected):
            wanted = ("StringLookup or IntegerLookup" if position == 0 else
                      "Embedding" if position == 1 else "nothing after the Embedding")
            raise ExportError(f"{where}: layer {position} {_describe(layer)} is not supported "
                              f"there; expected {wanted}")
    if len(layers) != 2:
        raise ExportError(f"{where} has {len(layers)} layer(s); expected a lookup and an Embedding")
    lookup, embedding = layers
    integer = isinstance(lookup, tf.keras.layers.IntegerLookup)
    lwhere = f"{where} lookup {_describe(lookup)}"
    if lookup.invert or lookup.output_mode != "int":
        raise ExportError(f"{lwhere}: invert={lookup.invert}, output_mode={lookup.output_mode!r}; "
                          "expected invert=False, output_mode='int'")
    if lookup.num_oov_indices != 1:
        raise ExportError(f"{lwhere} has num_oov_indices={lookup.num_oov_indices}; the ranker "
                          "has exactly one out-of-vocabulary row (num_oov_indices=1)")

    values = list(lookup.get_vocabulary(include_special_tokens=False))
    if integer:
        values = [int(v) for v in values]
        taken = set(values) | {lookup.mask_token, lookup.oov_token}
        oov_value = max([v for v in taken if v is not None] + [0]) + 1
    else:
        values = [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
        taken = set(values) | {lookup.mask_token, lookup.oov_token}
        oov_value = "[recsys-oov]"
        while oov_value in taken:
            oov_value += "~"
    mask = lookup.mask_token
    # With a mask token Keras puts the mask at index 0 and the OOV index at 1; the
    # ranker's row 0 is OOV, so the mask becomes an ordinary vocabulary line that
    # keeps its own embedding row, and a request carrying it scores as in Keras.
    keys = ([mask] if mask is not None else []) + values
    dtype = tf.int64 if integer else tf.string
    indices = lookup(tf.constant([oov_value] + keys, dtype=dtype)).numpy().astype(np.int64)
    if indices[0] in set(indices[1:].tolist()):
        raise ExportError(f"{lwhere}: its OOV index {indices[0]} is shared with a vocabulary "
                          "value; expected one index per value")

    if not isinstance(embedding, tf.keras.layers.Embedding):
        raise ExportError(f"{where}: {_describe(embedding)} is not an Embedding")
    _check_float32(embedding, where)
    if not embedding.built:
        raise ExportError(f"{where} Embedding {_describe(embedding)} has no weights yet")
    weights = embedding.embeddings.numpy()
    if weights.ndim != 2 or indices.max() >= weights.shape[0]:
        raise ExportError(f"{where} Embedding {_describe(embedding)} is {list(weights.shape)}; "
                          f"its lookup reaches index {int(indices.max())}")
    return Feature(
        model_name=model_name,
        name=name,
        side=side,
        integer=integer,
        vocabulary=[text_value(v, f"feature {model_name!r} vocabulary") for v in keys],
        table=weights[indices].astype(np.float32),
        mask_token=None if mask is None else text_value(mask, f"feature {model_name!r} mask token"),
        oov_value=oov_value,
    )


@dataclass
class _CrossBlock:
    projection_dim: int | None
    diag_scale: float
    activation: str
    kernel: np.ndarray | None  # full rank, Keras (in, out)
    kernel_u: np.ndarray | None  # low rank, Keras (in, r)
    kernel_v: np.ndarray | None  # low rank, Keras (r, in)
    bias: np.ndarray | None
    where: str


def _read_cross(layer, where: str) -> list[_CrossBlock]:
    if isinstance(layer, Cross):
        _check_float32(layer, where)
        if not layer.built:
            raise ExportError(f"{where} {_describe(layer)} has no weights yet")
        if layer._projection_dim is None:
            dense, u = layer._dense, None
        else:
            dense, u = layer._dense_v, layer._dense_u
        return [_CrossBlock(
            projection_dim=layer._projection_dim,
            diag_scale=float(layer._diag_scale or 0.0),
            activation=_activation(dense.activation, f"{where} {_describe(layer)}"),
            kernel=None if u is not None else dense.kernel.numpy(),
            kernel_u=None if u is None else u.kernel.numpy(),
            kernel_v=None if u is None else dense.kernel.numpy(),
            bias=dense.bias.numpy() if dense.use_bias else None,
            where=f"{where} {_describe(layer)}",
        )]
    if isinstance(layer, MultiLayerDCN):
        # multi_layer_dcn.py: x_{l+1} = x0 * V_l(U_l(x_l)) + x_l, no diag_scale, no activation.
        _check_float32(layer, where)
        if not layer.built:
            raise ExportError(f"{where} {_describe(layer)} has no weights yet")
        return [_CrossBlock(
            projection_dim=layer._projection_dim, diag_scale=0.0, activation="linear",
            kernel=None, kernel_u=u.kernel.numpy(), kernel_v=v.kernel.numpy(),
            bias=v.bias.numpy() if v.use_bias else None,
            where=f"{where} {_describe(layer)} layer {i}",
        ) for i, (u, v) in enumerate(zip(layer._dense_u_kernels, layer._dense_v_kernels))]
    raise ExportError(f"{where} is {_describe(layer)}; expected tfrs.layers.dcn.Cross or "
                      "tfrs.layers.feature_interaction.MultiLayerDCN")


def _cross_layers(model) -> list:
    many = getattr(model, "_cross_layers", None)
    one = getattr(model, "_cross_layer", None)
    if many and one is not None:
        raise ExportError("model has both _cross_layer and _cross_layers; expected one of them")
    if many:
        return [(f"model._cross_layers[{i}]", layer) for i, layer in enumerate(many)]
    return [] if one is None else [("model._cross_layer", one)]


def _dense(layer, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    if not isinstance(layer, tf.keras.layers.Dense):
        raise ExportError(f"{where} is {_describe(layer)}; expected Dense")
    _check_float32(layer, where)
    kernel = layer.kernel.numpy()
    # A Dense without a bias is the same as one with a zero bias; ranker.rs wants one.
    bias = layer.bias.numpy() if layer.use_bias else np.zeros(kernel.shape[1], np.float32)
    return kernel, bias, _activation(layer.activation, f"{where} {_describe(layer)}")


def _is_task(layer) -> bool:
    """TFRS tasks and Keras metrics: training only. A task revived from a SavedModel
    is a generic RevivedLayer that keeps its class name."""
    if isinstance(layer, (tfrs.tasks.base.Task, tf.keras.metrics.Metric)):
        return True
    revived = any(c.__name__ == "RevivedLayer" for c in type(layer).__mro__)
    return revived and type(layer).__name__ in ("Ranking", "Retrieval")


def _check_children(model, known: list) -> None:
    """Refuses any tracked layer the exporter would silently leave out."""
    known_ids = {id(layer) for layer in known}
    for layer in model._flatten_layers(include_self=False, recursive=False):
        if id(layer) in known_ids or _is_task(layer):
            continue
        raise ExportError(
            f"layer {_describe(layer)} is not part of the model shape the exporter supports "
            "(per-feature lookup + Embedding in model._embeddings, Cross layers, deep Dense "
            "layers, a Dense(1) head); a model that uses it cannot be served as a DCN-V2")


def _x0_order(model, spec: Spec, names: list[str]) -> list[str]:
    order = list(getattr(model, "_all_features", None) or [])
    source = "model._all_features"
    if not order:
        if not spec.x0_order:
            raise ExportError("the model does not say its x0 order (no model._all_features, as "
                              "after loading a SavedModel): give spec.x0_order")
        order, source = list(spec.x0_order), "spec.x0_order"
    elif spec.x0_order and list(spec.x0_order) != order:
        raise ExportError(f"spec.x0_order {spec.x0_order} differs from model._all_features {order}")
    if sorted(order) != sorted(names) or len(set(order)) != len(order):
        raise ExportError(f"{source} {order} must name each feature of model._embeddings "
                          f"{sorted(names)} once")
    return order


def probe_inputs(features: list[Feature], rows: list[dict[str, object]]) -> dict[str, tf.Tensor]:
    """Model inputs for `rows` of {model feature name: value}."""
    return {
        f.model_name: tf.constant([row[f.model_name] for row in rows],
                                  dtype=tf.int64 if f.integer else tf.string)
        for f in features
    }


def warm_up(model) -> None:
    """Calls the model once on out-of-vocabulary values, so every layer has weights."""
    embeddings = getattr(model, "_embeddings", None)
    if not embeddings:
        raise ExportError("model has no _embeddings dict {feature: Sequential([lookup, "
                          "Embedding])}; the exporter reads the TFRS DCN tutorial's model "
                          "contract (README.md); functional models are not supported")
    inputs = {}
    for name, pipeline in embeddings.items():
        lookup = pipeline.layers[0] if isinstance(pipeline, tf.keras.Sequential) and pipeline.layers else None
        integer = isinstance(lookup, tf.keras.layers.IntegerLookup)
        inputs[name] = tf.constant([-7 if integer else "[recsys-warm-up]"],
                                   dtype=tf.int64 if integer else tf.string)
    try:
        model(inputs)
    except Exception as e:  # the model's own call: anything can go wrong
        raise ExportError(f"model(features) failed on the inputs model._embeddings "
                          f"describes ({sorted(inputs)}): {e}") from e


def read_model(model, spec: Spec):
    """Features in x0 order, the DcnConfig dict and our tensors, or an ExportError."""
    warm_up(model)
    embeddings = dict(model._embeddings)
    missing = sorted(set(embeddings) - set(spec.sides))
    extra = sorted(set(spec.sides) - set(embeddings))
    if missing or extra:
        raise ExportError(f"spec.features must give a side for exactly the model's features "
                          f"{sorted(embeddings)}: missing {missing}, not in the model {extra}")
    order = _x0_order(model, spec, list(embeddings))
    features = []
    for model_name in order:
        name = spec.rename.get(model_name, model_name)
        if not name or "/" in name or name.startswith("."):
            raise ExportError(f"feature name {name!r} cannot be a vocabulary file name")
        features.append(_read_feature(model_name, embeddings[model_name], name,
                                      spec.sides[model_name]))
    if len({f.name for f in features}) != len(features):
        raise ExportError(f"feature names {[f.name for f in features]} are not unique after rename")
    input_dim = sum(f.dim for f in features)

    cross_layers = _cross_layers(model)
    blocks = [b for where, layer in cross_layers for b in _read_cross(layer, where)]
    if len(cross_layers) > 1 and any(isinstance(l, MultiLayerDCN) for _, l in cross_layers):
        # MultiLayerDCN takes only x0, so it cannot continue another layer's x_l.
        raise ExportError("a MultiLayerDCN must be the only cross layer; found "
                          f"{[_describe(l) for _, l in cross_layers]}")
    deep_layers = list(getattr(model, "_deep_layers", None) or [])
    head_layer = getattr(model, "_logit_layer", None)
    if head_layer is None:
        raise ExportError("model has no _logit_layer (the tutorial's final Dense(1))")
    _check_children(model, [embeddings[n] for n in embeddings] + [layer for _, layer in cross_layers]
                    + deep_layers + [head_layer])

    tensors: dict[str, np.ndarray] = {f"embedding.{f.name}": f.table for f in features}
    cfg = {"input_dim": input_dim, "cross_layers": len(blocks)}
    for key, values in (("projection_dim", {b.projection_dim for b in blocks}),
                        ("diag_scale", {b.diag_scale for b in blocks}),
                        ("cross_activation", {b.activation for b in blocks})):
        if len(values) > 1:
            raise ExportError(f"cross layers differ in {key} ({sorted(map(str, values))}); "
                              "ranker.rs uses one value for all of them")
    cfg["projection_dim"] = blocks[0].projection_dim if blocks else None
    cfg["diag_scale"] = blocks[0].diag_scale if blocks else 0.0
    cfg["use_bias"] = any(b.bias is not None for b in blocks)
    cfg["cross_activation"] = blocks[0].activation if blocks else "linear"
    for i, b in enumerate(blocks):
        if b.kernel is not None:
            if b.kernel.shape != (input_dim, input_dim):
                raise ExportError(f"{b.where} kernel is {list(b.kernel.shape)}; x0 is {input_dim} wide")
            tensors[f"cross.{i}.weight"] = b.kernel.T
        else:
            r = b.projection_dim
            if b.kernel_u.shape != (input_dim, r) or b.kernel_v.shape != (r, input_dim):
                raise ExportError(f"{b.where} U, V are {list(b.kernel_u.shape)}, "
                                  f"{list(b.kernel_v.shape)}; x0 is {input_dim} wide, rank {r}")
            tensors[f"cross.{i}.u"] = b.kernel_u.T
            tensors[f"cross.{i}.v"] = b.kernel_v.T
        if cfg["use_bias"]:
            # A layer without a bias among layers with one: a zero bias is the same.
            tensors[f"cross.{i}.bias"] = (b.bias if b.bias is not None
                                          else np.zeros(input_dim, np.float32))

    deep_units, activations, width = [], set(), input_dim
    for j, layer in enumerate(l for l in deep_layers if not isinstance(l, tf.keras.layers.Dropout)):
        kernel, bias, act = _dense(layer, f"model._deep_layers entry {_describe(layer)}")
        if kernel.shape[0] != width:
            raise ExportError(f"deep layer {_describe(layer)} takes {kernel.shape[0]} inputs; "
                              f"the layer before gives {width}")
        tensors[f"deep.{j}.weight"], tensors[f"deep.{j}.bias"] = kernel.T, bias
        deep_units.append(int(kernel.shape[1]))
        activations.add(act)
        width = int(kernel.shape[1])
    if len(activations) > 1:
        raise ExportError(f"deep layers use activations {sorted(activations)}; ranker.rs uses one")

    kernel, bias, head_act = _dense(head_layer, "model._logit_layer")
    if kernel.shape[1] != 1:
        raise ExportError(f"model._logit_layer {_describe(head_layer)} has {kernel.shape[1]} "
                          "units; expected 1")
    if head_act not in ("linear", "sigmoid"):
        raise ExportError(f"model._logit_layer {_describe(head_layer)} has activation "
                          f"{head_act!r}; expected linear (regression) or sigmoid (logit)")
    head_in = int(kernel.shape[0])
    if head_in == width:
        structure = "stacked"
    elif deep_units and head_in == input_dim + width:
        structure = "parallel"
        if spec.parallel_concat == "deep_cross":
            kernel = np.concatenate([kernel[width:], kernel[:width]])
    else:
        raise ExportError(f"model._logit_layer {_describe(head_layer)} takes {head_in} inputs; "
                          f"stacked needs {width}, parallel needs {input_dim} + {width}")
    tensors["head.weight"], tensors["head.bias"] = kernel.T, bias
    cfg.update(structure=structure, deep_units=deep_units,
               deep_activation=activations.pop() if activations else "relu",
               head="logit" if head_act == "sigmoid" else "regression")
    tensors = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}
    return features, cfg, tensors


def is_int(value) -> bool:
    try:
        int(value)
        return True
    except (TypeError, ValueError):
        return False
