#!/usr/bin/env python3
"""Generate DCN-V2 cross-network parity fixtures from real TensorFlow Recommenders.

Writes ``model/tests/fixtures/dcn_tfrs.json`` (relative to the repo root): a list
of cases, each holding a layer/model configuration, every trainable weight in
Keras layout, an input batch ``x0`` and the output TFRS computes for it.  The
Rust (candle) implementation of ``tfrs.layers.dcn.Cross`` must reproduce
``expected`` from ``x0`` and ``weights``.

Run from the repository root (see tools/tfrs_fixtures/README.md):

    TF_USE_LEGACY_KERAS=1 target/tfrs-venv/bin/python tools/tfrs_fixtures/generate_dcn.py

Everything is deterministic: inputs come from ``numpy.random.default_rng`` with
fixed seeds and weights from Keras initializers with fixed seeds.

The script also re-computes every case in plain numpy (float64) from the saved
float32 weights with the formula below, and fails if it differs from TFRS's own
output by more than 1e-5.  ``numpy_cross`` is the normative description of the
math the Rust port has to implement.

TFRS Cross (tensorflow_recommenders/layers/feature_interaction/dcn.py, v0.7.7):

    full rank  (projection_dim is None):
        y = act(x_l @ W + b)                       # one Dense(dim), lines 120-130, 177
    low rank   (projection_dim = r):
        y = act((x_l @ U) @ V + b)                 # Dense_u(r, no bias, no act) then
                                                   # Dense_v(dim, bias, act), 131-148, 179
    if diag_scale:                                 # lines 183-184 (AFTER the activation)
        y = y + diag_scale * x_l
    x_{l+1} = x0 * y + x_l                         # line 186

    ``b`` exists only if use_bias (and then only on W / V, never on U);
    ``act`` is ``preactivation`` (identity when None).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# TFRS is written against Keras 2; this must be set before TensorFlow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_recommenders as tfrs  # noqa: E402
from tensorflow_recommenders.layers.feature_interaction.dcn import Cross  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
OUT_PATH = REPO_ROOT / "model" / "tests" / "fixtures" / "dcn_tfrs.json"

BATCH = 4
DIM = 8
TOLERANCE = 1e-5

# --------------------------------------------------------------------------- #
# Environment checks
# --------------------------------------------------------------------------- #

# With TF_USE_LEGACY_KERAS=1 and tf-keras installed, tf.keras is the tf_keras
# package (Keras 2); otherwise it is Keras 3, which TFRS does not support.
if not tf.keras.__name__.startswith("tf_keras"):
    sys.exit(
        f"tf.keras is {tf.keras.__name__} (Keras 3?); TFRS needs Keras 2. "
        "Install tf-keras and run with TF_USE_LEGACY_KERAS=1."
    )

import tf_keras  # noqa: E402

TF_KERAS_VERSION = tf_keras.__version__

_CROSS_INIT_ARGS = Cross.__init__.__code__.co_varnames
SUPPORTS_PREACTIVATION = "preactivation" in _CROSS_INIT_ARGS


# --------------------------------------------------------------------------- #
# Serialization helpers
# --------------------------------------------------------------------------- #


def tensor_json(array) -> dict:
    """A float32 tensor as {"shape": [...], "values": flat row-major list}.

    Values are written as the exact float64 value of each float32 (e.g.
    0.30000001192092896), so parsing as f64 and casting to f32 is lossless.
    """
    a = np.asarray(array, dtype=np.float32)
    return {"shape": list(a.shape), "values": [float(v) for v in a.reshape(-1)]}


def weight_json(name: str, variable) -> dict:
    entry = {"name": name, "keras_name": variable.name}
    entry.update(tensor_json(variable.numpy()))
    return entry


def act_name(preactivation) -> str | None:
    if preactivation is None:
        return None
    if isinstance(preactivation, str):
        return preactivation
    if preactivation is tf.zeros_like:  # its __name__ is "zeros_like_v2"
        return "zeros_like"
    return getattr(preactivation, "__name__", repr(preactivation))


def cross_weights(prefix: str, layer: Cross) -> list[dict]:
    """Canonical names + Keras variables of one built Cross layer.

    full rank: {prefix}/kernel (dim, dim), [{prefix}/bias (dim,)]
    low rank:  {prefix}/kernel_u (dim, r), {prefix}/kernel_v (r, dim),
               [{prefix}/bias (dim,)]   -- the bias belongs to the V dense layer
    """
    out = []
    if layer._projection_dim is None:
        out.append(weight_json(f"{prefix}/kernel", layer._dense.kernel))
        if layer._dense.use_bias:
            out.append(weight_json(f"{prefix}/bias", layer._dense.bias))
    else:
        assert not layer._dense_u.use_bias, "TFRS U projection is expected to have no bias"
        out.append(weight_json(f"{prefix}/kernel_u", layer._dense_u.kernel))
        out.append(weight_json(f"{prefix}/kernel_v", layer._dense_v.kernel))
        if layer._dense_v.use_bias:
            out.append(weight_json(f"{prefix}/bias", layer._dense_v.bias))
    # Every variable of the layer must be accounted for.
    assert sorted(w["keras_name"] for w in out) == sorted(v.name for v in layer.weights), (
        [w["keras_name"] for w in out],
        [v.name for v in layer.weights],
    )
    return out


def dense_weights(prefix: str, layer: tf.keras.layers.Dense) -> list[dict]:
    out = [weight_json(f"{prefix}/kernel", layer.kernel)]
    if layer.use_bias:
        out.append(weight_json(f"{prefix}/bias", layer.bias))
    return out


# --------------------------------------------------------------------------- #
# Plain numpy reference (the math the Rust port must implement)
# --------------------------------------------------------------------------- #

NP_ACTIVATIONS = {
    None: lambda v: v,
    "linear": lambda v: v,
    "relu": lambda v: np.maximum(v, 0.0),
    "zeros_like": np.zeros_like,  # dcn_test.py::test_preactivation uses tf.zeros_like
}


def numpy_dense(x, kernel, bias=None, activation=None):
    """Keras Dense: act(x @ kernel + bias), kernel is (in, out)."""
    y = x @ kernel
    if bias is not None:
        y = y + bias
    return NP_ACTIVATIONS[activation](y)


def numpy_cross(x0, x, w: dict, prefix: str, cfg: dict):
    """One TFRS Cross layer: x0 * (act(W x + b) + diag_scale * x) + x."""
    bias = w.get(f"{prefix}/bias")
    act = cfg["preactivation"]
    if cfg["projection_dim"] is None:
        prod = numpy_dense(x, w[f"{prefix}/kernel"], bias, act)
    else:
        low = numpy_dense(x, w[f"{prefix}/kernel_u"])  # no bias, no activation
        prod = numpy_dense(low, w[f"{prefix}/kernel_v"], bias, act)
    if cfg["diag_scale"]:
        prod = prod + cfg["diag_scale"] * x  # added after the activation
    return x0 * prod + x


def numpy_forward(case: dict) -> np.ndarray:
    cfg = case["config"]
    w = {
        e["name"]: np.asarray(e["values"], dtype=np.float64).reshape(e["shape"])
        for e in case["weights"]
    }
    x0 = np.asarray(case["x0"]["values"], dtype=np.float64).reshape(case["x0"]["shape"])
    x = x0
    if case.get("x") is not None:
        x = np.asarray(case["x"]["values"], dtype=np.float64).reshape(case["x"]["shape"])

    # Cross stack: x_{l+1} = cross_l(x0, x_l), x_0 = x (== x0 unless given).
    xl = x
    for i in range(cfg["num_cross_layers"]):
        xl = numpy_cross(x0, xl, w, f"cross_{i}", cfg)

    structure = cfg["structure"]
    if structure in ("single", "cross_stack"):
        return xl
    if structure == "cross_stack_head":
        return numpy_dense(xl, w["head/kernel"], w.get("head/bias"))
    if structure in ("dcn_stacked", "dcn_parallel"):
        h = xl if structure == "dcn_stacked" else x0
        for j in range(len(cfg["deep_units"])):
            h = numpy_dense(h, w[f"deep_{j}/kernel"], w.get(f"deep_{j}/bias"), cfg["deep_activation"])
        if structure == "dcn_parallel":
            h = np.concatenate([xl, h], axis=-1)  # order: [cross, deep]
        return numpy_dense(h, w["head/kernel"], w.get("head/bias"))
    raise ValueError(structure)


# --------------------------------------------------------------------------- #
# Case builders
# --------------------------------------------------------------------------- #


def reset(seed: int) -> None:
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(seed)


def rand_input(seed: int, shape=(BATCH, DIM)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def kernel_init(seed: int):
    # stddev well above TFRS's default (0.05) so the cross term is not negligible.
    return tf.keras.initializers.TruncatedNormal(mean=0.0, stddev=0.5, seed=seed)


def bias_init(seed: int):
    return tf.keras.initializers.RandomUniform(minval=-0.5, maxval=0.5, seed=seed)


def base_config(*, projection_dim=None, diag_scale=0.0, use_bias=True, preactivation=None,
                num_cross_layers=1, structure="single") -> dict:
    return {
        "projection_dim": projection_dim,
        "diag_scale": float(diag_scale),
        "use_bias": use_bias,
        "preactivation": act_name(preactivation),
        "num_cross_layers": num_cross_layers,
        "structure": structure,
    }


def golden_case(name: str, test_name: str, test_expected, *, x0, x=None, seed=0, **layer_kwargs) -> dict:
    """One of dcn_test.py's single-layer golden tests, reproduced verbatim."""
    reset(seed)
    layer = Cross(name="cross_0", **layer_kwargs)
    out = layer(x0) if x is None else layer(x0, x)
    cfg = base_config(
        projection_dim=layer_kwargs.get("projection_dim"),
        diag_scale=layer_kwargs.get("diag_scale", 0.0),
        use_bias=layer_kwargs.get("use_bias", True),
        preactivation=layer_kwargs.get("preactivation"),
    )
    cfg["kernel_initializer"] = layer_kwargs.get("kernel_initializer", "truncated_normal")
    cfg["bias_initializer"] = layer_kwargs.get("bias_initializer", "zeros")
    test_expected = np.asarray(test_expected, dtype=np.float32)
    # Same tolerance as tf.test.TestCase.assertAllClose (rtol=atol=1e-6).
    np.testing.assert_allclose(out.numpy(), test_expected, rtol=1e-6, atol=1e-6)
    return {
        "name": name,
        "source": "dcn_test.py",
        "test": f"CrossTest.{test_name}",
        "config": cfg,
        "weights": cross_weights("cross_0", layer),
        "x0": tensor_json(x0),
        "x": None if x is None else tensor_json(x),
        "expected": tensor_json(out.numpy()),
        "test_expected": tensor_json(test_expected),
    }


def golden_cases() -> list[dict]:
    x0 = np.asarray([[0.1, 0.2, 0.3]], dtype=np.float32)
    x = np.asarray([[0.4, 0.5, 0.6]], dtype=np.float32)
    cases = [
        golden_case("golden_full_matrix", "test_full_matrix", [[0.55, 0.8, 1.05]],
                    x0=x0, x=x, projection_dim=None, kernel_initializer="ones"),
        golden_case("golden_low_rank_matrix", "test_low_rank_matrix", [[0.55, 0.8, 1.05]],
                    x0=x0, x=x, projection_dim=1, kernel_initializer="ones"),
        golden_case("golden_one_input", "test_one_input", [[0.16, 0.32, 0.48]],
                    x0=x0, projection_dim=None, kernel_initializer="ones"),
        golden_case("golden_bias", "test_bias", [[0.65, 1.0, 1.35]],
                    x0=x0, x=x, projection_dim=None, kernel_initializer="ones",
                    bias_initializer="ones"),
        golden_case("golden_diag_scale", "test_diag_scale", [[0.59, 0.9, 1.23]],
                    x0=x0, x=x, projection_dim=None, diag_scale=1.0,
                    kernel_initializer="ones"),
    ]
    if SUPPORTS_PREACTIVATION:
        # The test's kernel is the (unseeded) default truncated_normal; the output
        # equals x whatever the kernel is, because the preactivation zeroes W x + b.
        cases.append(golden_case("golden_preactivation", "test_preactivation", x,
                                 x0=x0, x=x, seed=1, projection_dim=None,
                                 preactivation=tf.zeros_like))

    # test_save_model: Input(13) -> Cross -> Cross -> Dense(1) on uniform(10, 13)
    # inputs. The test has no literal expected values (it checks save/load
    # equality) and is unseeded; here the same architecture with default
    # initializers is run under a fixed seed.
    reset(2)
    inp = tf.keras.layers.Input(shape=(13,))
    c0 = Cross(projection_dim=None, name="cross_0")
    c1 = Cross(projection_dim=None, name="cross_1")
    head = tf.keras.layers.Dense(units=1, name="head")
    model = tf.keras.Model(inp, head(c1(inp, c0(inp, inp))))
    xin = np.random.default_rng(2).uniform(size=(10, 13)).astype(np.float32)
    out = model(xin, training=False).numpy()
    cfg = base_config(num_cross_layers=2, structure="cross_stack_head")
    cfg.update(kernel_initializer="truncated_normal", bias_initializer="zeros",
               head_units=1, head_kernel_initializer="glorot_uniform")
    cases.append({
        "name": "golden_save_model_architecture",
        "source": "dcn_test.py",
        "test": "CrossTest.test_save_model",
        "note": "architecture of test_save_model; the test itself is unseeded and "
                "asserts only save/load equality, so weights and inputs here are seeded "
                "and the expected output is TFRS's forward pass",
        "config": cfg,
        "weights": cross_weights("cross_0", c0) + cross_weights("cross_1", c1)
        + dense_weights("head", head),
        "x0": tensor_json(xin),
        "x": None,
        "expected": tensor_json(out),
    })
    return cases


def random_cross_case(name: str, description: str, seed: int, *, num_cross_layers=1,
                      projection_dim=None, diag_scale=0.0, use_bias=True,
                      preactivation=None) -> dict:
    """Seeded random weights, batch 4 x dim 8, cross_l(x0, x_l) stack."""
    reset(seed)
    x0 = rand_input(seed)
    layers = [
        Cross(projection_dim=projection_dim, diag_scale=diag_scale, use_bias=use_bias,
              preactivation=preactivation, kernel_initializer=kernel_init(seed * 100 + i),
              bias_initializer=bias_init(seed * 100 + 50 + i), name=f"cross_{i}")
        for i in range(num_cross_layers)
    ]
    xl = tf.constant(x0)
    for i, layer in enumerate(layers):
        if projection_dim is not None:
            # TFRS clones one kernel_initializer (same config, same seed) for U and
            # V, so both would get the same flat value stream. Build the layer
            # through a first call (so Keras names its variables as usual), then
            # re-draw V from a different seed so the fixture tells U and V apart.
            layer(x0, x0)
            v = layer._dense_v.kernel
            v.assign(kernel_init(seed * 100 + 30 + i)(v.shape))
        xl = layer(x0, xl)
    cfg = base_config(projection_dim=projection_dim, diag_scale=diag_scale, use_bias=use_bias,
                      preactivation=preactivation, num_cross_layers=num_cross_layers,
                      structure="single" if num_cross_layers == 1 else "cross_stack")
    weights = []
    for i, layer in enumerate(layers):
        weights += cross_weights(f"cross_{i}", layer)
    return {
        "name": name,
        "source": "generated",
        "description": description,
        "config": cfg,
        "weights": weights,
        "x0": tensor_json(x0),
        "x": None,
        "expected": tensor_json(xl.numpy()),
    }


def dcn_model_case(name: str, structure: str, seed: int) -> dict:
    """Functional Keras model: 2 full-rank Cross layers + MLP(16, 8, relu) + Dense(1)."""
    reset(seed)
    x0 = rand_input(seed)
    inp = tf.keras.layers.Input(shape=(DIM,), name="x0")
    crosses = [
        Cross(projection_dim=None, kernel_initializer=kernel_init(seed * 100 + i),
              bias_initializer=bias_init(seed * 100 + 50 + i), name=f"cross_{i}")
        for i in range(2)
    ]
    deep = [
        tf.keras.layers.Dense(units, activation="relu",
                              kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed * 100 + 10 + j),
                              bias_initializer=bias_init(seed * 100 + 60 + j), name=f"deep_{j}")
        for j, units in enumerate((16, 8))
    ]
    head = tf.keras.layers.Dense(1, kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed * 100 + 20),
                                 bias_initializer=bias_init(seed * 100 + 70), name="head")

    xl = inp
    for c in crosses:
        xl = c(inp, xl)
    h = xl if structure == "dcn_stacked" else inp
    for d in deep:
        h = d(h)
    if structure == "dcn_parallel":
        h = tf.keras.layers.Concatenate(axis=-1, name="concat")([xl, h])
    model = tf.keras.Model(inp, head(h), name=structure)
    out = model(x0, training=False).numpy()

    cfg = base_config(num_cross_layers=2, structure=structure)
    cfg.update(deep_units=[16, 8], deep_activation="relu", head_units=1)
    if structure == "dcn_parallel":
        cfg["concat_order"] = ["cross", "deep"]
    weights = []
    for i, c in enumerate(crosses):
        weights += cross_weights(f"cross_{i}", c)
    for j, d in enumerate(deep):
        weights += dense_weights(f"deep_{j}", d)
    weights += dense_weights("head", head)
    assert len(weights) == len(model.weights)
    description = {
        "dcn_stacked": "x0 -> cross_0 -> cross_1 -> deep_0 Dense(16,relu) -> deep_1 Dense(8,relu) -> head Dense(1)",
        "dcn_parallel": "concat([cross_1(x0, cross_0(x0, x0)), deep_1(deep_0(x0))]) -> head Dense(1); "
                        "deep_0 Dense(16,relu), deep_1 Dense(8,relu); head kernel rows 0..8 = cross, 8..16 = deep",
    }[structure]
    return {
        "name": name,
        "source": "generated",
        "description": description,
        "config": cfg,
        "weights": weights,
        "x0": tensor_json(x0),
        "x": None,
        "expected": tensor_json(out),
    }


def generated_cases() -> list[dict]:
    cases = [
        random_cross_case("single_full_rank_bias", "one Cross, full rank, bias, diag_scale 0", 10),
        random_cross_case("single_low_rank_bias", "one Cross, projection_dim 3 (U 8x3 no bias, V 3x8 + bias)",
                          11, projection_dim=3),
        random_cross_case("single_full_rank_diag_nobias", "one Cross, full rank, diag_scale 0.5, use_bias false",
                          12, diag_scale=0.5, use_bias=False),
        random_cross_case("single_low_rank_nobias", "one Cross, projection_dim 3, use_bias false",
                          13, projection_dim=3, use_bias=False),
    ]
    if SUPPORTS_PREACTIVATION:
        cases += [
            random_cross_case("single_full_rank_relu", "one Cross, full rank, bias, preactivation relu",
                              14, preactivation="relu"),
            random_cross_case("single_full_rank_relu_diag",
                              "one Cross, full rank, bias, relu, diag_scale 0.5: pins that diag_scale*x "
                              "is added after the activation", 15, preactivation="relu", diag_scale=0.5),
            random_cross_case("single_low_rank_relu_diag",
                              "one Cross, projection_dim 3, bias, relu (on V output only), diag_scale 0.25",
                              16, projection_dim=3, preactivation="relu", diag_scale=0.25),
        ]
    cases += [
        random_cross_case("two_cross_full_rank", "x1 = cross_0(x0, x0); x2 = cross_1(x0, x1)", 17,
                          num_cross_layers=2),
        random_cross_case("two_cross_low_rank_diag", "two stacked Cross, projection_dim 3, diag_scale 0.5", 18,
                          num_cross_layers=2, projection_dim=3, diag_scale=0.5),
        dcn_model_case("dcn_stacked", "dcn_stacked", 19),
        dcn_model_case("dcn_parallel", "dcn_parallel", 20),
    ]
    return cases


# --------------------------------------------------------------------------- #
# Main
# --------------------------------------------------------------------------- #


def self_check(cases: list[dict]) -> None:
    for case in cases:
        expected = np.asarray(case["expected"]["values"], dtype=np.float64).reshape(case["expected"]["shape"])
        got = numpy_forward(case)
        assert got.shape == expected.shape, (case["name"], got.shape, expected.shape)
        diff = float(np.max(np.abs(got - expected)))
        case["numpy_max_abs_diff"] = diff
        assert diff <= TOLERANCE, f"{case['name']}: numpy vs TFRS max abs diff {diff}"
        print(f"  ok  {case['name']:<34} out {tuple(expected.shape)}  numpy max|diff| = {diff:.2e}")

    # The relu + diag_scale case must discriminate act(Wx+b) + d*x (TFRS) from
    # act(Wx+b + d*x); otherwise it would not pin the order down.
    for case in cases:
        if case["name"] == "single_full_rank_relu_diag":
            cfg = case["config"]
            w = {e["name"]: np.asarray(e["values"]).reshape(e["shape"]) for e in case["weights"]}
            x0 = np.asarray(case["x0"]["values"]).reshape(case["x0"]["shape"])
            wrong = x0 * np.maximum(x0 @ w["cross_0/kernel"] + w["cross_0/bias"] + cfg["diag_scale"] * x0, 0) + x0
            expected = np.asarray(case["expected"]["values"]).reshape(case["expected"]["shape"])
            assert np.max(np.abs(wrong - expected)) > 1e-3, "relu+diag case does not discriminate"


def main() -> None:
    cases = golden_cases() + generated_cases()
    print(f"TensorFlow {tf.__version__}, tf-keras {TF_KERAS_VERSION}, TFRS {tfrs.__version__}, "
          f"numpy {np.__version__}")
    self_check(cases)
    doc = {
        "description": "DCN-V2 Cross parity fixtures generated with TensorFlow Recommenders "
                       "(tfrs.layers.dcn.Cross). See tools/tfrs_fixtures/README.md.",
        "generator": "tools/tfrs_fixtures/generate_dcn.py",
        "versions": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            "tf_keras": TF_KERAS_VERSION,
            "tensorflow_recommenders": tfrs.__version__,
            "numpy": np.__version__,
        },
        "preactivation_supported": SUPPORTS_PREACTIVATION,
        "formula": "x_{l+1} = x0 * (act(x_l @ W + b) + diag_scale * x_l) + x_l; low rank: "
                   "x_l @ W := (x_l @ U) @ V, bias only on V; act = preactivation (identity if null); "
                   "b present only if use_bias",
        "layout": "row-major; Dense kernels are (in, out) and y = x @ kernel + bias; "
                  "values are exact float32 numbers written as decimal",
        "tolerance_numpy_self_check": TOLERANCE,
        "cases": cases,
    }
    OUT_PATH.parent.mkdir(parents=True, exist_ok=True)
    OUT_PATH.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {OUT_PATH} ({OUT_PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
