"""Classical machine-learning ops of ONNX's ai.onnx.ml domain: TreeEnsemble and LabelEncoder.

Both run on the host through their references: a tree walk and a table lookup are branchy,
data-dependent work with nothing for a device to parallelize at the sizes these models see.
(Binarizer and ArrayFeatureExtractor import as Greater+Cast and Gather; see the converters.)

TreeEnsemble walks every sample down every tree at once: one step moves each sample that
is still on an interior node to the branch its comparison picks, so the number of steps is
the depth of the deepest tree, not the number of samples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ember.errors import DTypeError, ShapeError, UnsupportedOpError
from ember.ir.attrs import AttrKind, Attrs
from ember.ir.dtypes import DType
from ember.ir.ops.common import FLOAT_TYPES, require_dtype
from ember.ir.ops.registry import OPS, OpDef, attr
from ember.ir.types import TensorType

__all__ = ["LABEL_ENCODER_DTYPES", "TREE_AGGREGATES", "TREE_MODES", "TREE_TRANSFORMS"]

# ONNX's encodings (TreeEnsemble, ai.onnx.ml opset 5), by position
TREE_MODES = ("LEQ", "LT", "GTE", "GT", "EQ", "NEQ", "MEMBER")
TREE_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
TREE_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")
_MEMBER = TREE_MODES.index("MEMBER")
_COMPARE = (np.less_equal, np.less, np.greater_equal, np.greater, np.equal, np.not_equal)

LABEL_ENCODER_DTYPES = frozenset({DType.STRING, DType.INT64, DType.FLOAT32, DType.INT32,
                                  DType.INT16, DType.FLOAT64})

_INTS, _TENSOR, _I = AttrKind.INTS, AttrKind.TENSOR, AttrKind.INT


# -- TreeEnsemble -----------------------------------------------------------------------------
def _infer_tree_ensemble(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    require_dtype(x, FLOAT_TYPES, "TreeEnsemble input")
    if x.rank != 2:
        raise ShapeError(f"TreeEnsemble input must be (N, F), got {x.shape}")
    nodes = len(attrs["nodes_modes"])
    for name in ("nodes_featureids", "nodes_truenodeids", "nodes_falsenodeids",
                 "nodes_trueleafs", "nodes_falseleafs"):
        if len(attrs[name]) != nodes:
            raise ShapeError(f"TreeEnsemble {name} has {len(attrs[name])} entries; "
                             f"nodes_modes has {nodes}")
    if len(attrs["nodes_splits"]) != nodes:
        raise ShapeError(f"TreeEnsemble nodes_splits has {len(attrs['nodes_splits'])} "
                         f"entries; nodes_modes has {nodes}")
    if any(f < 0 or f >= x.shape[1] for f in attrs["nodes_featureids"]):
        raise ShapeError(f"TreeEnsemble reads a feature outside the input's {x.shape[1]}")
    if any(not 0 <= t < attrs["n_targets"] for t in attrs["leaf_targetids"]):
        raise ShapeError(f"TreeEnsemble leaf_targetids must lie in [0, {attrs['n_targets']})")
    if len(attrs["leaf_weights"]) != len(attrs["leaf_targetids"]):
        raise ShapeError("TreeEnsemble leaf_weights and leaf_targetids differ in length")
    if attrs["post_transform"] == TREE_TRANSFORMS.index("PROBIT"):
        raise UnsupportedOpError("TreeEnsemble post_transform PROBIT is not supported")
    return (x.with_shape((x.shape[0], attrs["n_targets"])),)


def _member_sets(modes: Sequence[int], values: np.ndarray | None) -> dict[int, np.ndarray]:
    """The members of each BRANCH_MEMBER node: NaN-delimited runs, in node order."""
    members = [i for i, m in enumerate(modes) if m == _MEMBER]
    if not members:
        return {}
    flat = np.asarray([] if values is None else values, np.float64).reshape(-1)
    cuts = np.flatnonzero(np.isnan(flat))
    runs = np.split(flat, cuts)
    runs = [runs[0]] + [r[1:] for r in runs[1:]]
    if len(cuts) != len(members):
        raise ShapeError(f"TreeEnsemble has {len(members)} set membership nodes but "
                         f"membership_values holds {len(cuts)} NaN-ended sets")
    return dict(zip(members, runs))


def _goes_true(x: np.ndarray, node: np.ndarray, attrs: Attrs,
               sets: dict[int, np.ndarray]) -> np.ndarray:
    """For samples on interior nodes `node`: whether each takes the true branch."""
    modes = np.asarray(attrs["nodes_modes"])[node]
    feature = x[np.arange(len(node)), np.asarray(attrs["nodes_featureids"])[node]]
    split = np.asarray(attrs["nodes_splits"]).astype(x.dtype)[node]
    result = np.zeros(len(node), bool)
    for mode in np.unique(modes):
        on = modes == mode
        if mode == _MEMBER:
            result[on] = [float(v) in set(sets[n].tolist())
                          for v, n in zip(feature[on], node[on])]
        else:
            result[on] = _COMPARE[mode](feature[on], split[on])
    tracks = attrs["nodes_missing_value_tracks_true"]
    if tracks:
        result |= np.isnan(feature) & np.asarray(tracks, bool)[node]
    return result


def _tree_leaves(x: np.ndarray, root: int, attrs: Attrs, sets) -> np.ndarray:
    """The leaf index each sample of x reaches from `root`."""
    true_ids, false_ids = np.asarray(attrs["nodes_truenodeids"]), np.asarray(attrs["nodes_falsenodeids"])
    true_leaf = np.asarray(attrs["nodes_trueleafs"], bool)
    false_leaf = np.asarray(attrs["nodes_falseleafs"], bool)
    at = np.full(len(x), root, np.int64)
    done = np.zeros(len(x), bool)
    for _ in range(len(attrs["nodes_modes"]) + 1):
        live = np.flatnonzero(~done)
        if not live.size:
            return at
        node = at[live]
        go = _goes_true(x[live], node, attrs, sets)
        at[live] = np.where(go, true_ids[node], false_ids[node])
        done[live] = np.where(go, true_leaf[node], false_leaf[node])
    raise ShapeError(f"TreeEnsemble tree at node {root} has a cycle")


def _post_transform(scores: np.ndarray, transform: str) -> np.ndarray:
    if transform == "LOGISTIC":
        return 1.0 / (1.0 + np.exp(-scores))
    if transform in ("SOFTMAX", "SOFTMAX_ZERO"):
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        if transform == "SOFTMAX_ZERO":  # a zero score stays zero, out of the sum
            shifted = np.where(scores == 0, 0.0, shifted)
        return shifted / shifted.sum(axis=1, keepdims=True)
    return scores


def _tree_ensemble(x: np.ndarray, **attrs) -> np.ndarray:
    attrs = Attrs(attrs)
    sets = _member_sets(attrs["nodes_modes"], attrs["membership_values"])
    weights = np.asarray(attrs["leaf_weights"], np.float64)
    target_ids = np.asarray(attrs["leaf_targetids"], np.int64)
    aggregate = TREE_AGGREGATES[attrs["aggregate_function"]]
    out = np.zeros((len(x), attrs["n_targets"]), np.float64)
    if aggregate in ("MIN", "MAX"):  # ONNX's reference starts from the dtype's extremes
        limit = np.finfo(x.dtype)
        out[:] = float(limit.max if aggregate == "MIN" else limit.min)
    rows = np.arange(len(x))
    for root in attrs["tree_roots"]:
        leaf = _tree_leaves(x, root, attrs, sets)
        where = (rows, target_ids[leaf])
        if aggregate in ("SUM", "AVERAGE"):
            np.add.at(out, where, weights[leaf])
        else:
            (np.minimum if aggregate == "MIN" else np.maximum).at(out, where, weights[leaf])
    if aggregate == "AVERAGE" and attrs["tree_roots"]:
        out /= len(attrs["tree_roots"])
    with np.errstate(over="ignore", invalid="ignore"):
        out = _post_transform(out, TREE_TRANSFORMS[attrs["post_transform"]])
    return out.astype(x.dtype)


OPS.register(OpDef(
    "TreeEnsemble", _infer_tree_ensemble, _tree_ensemble,
    attrs=(attr("nodes_splits", _TENSOR), attr("nodes_featureids", _INTS),
           attr("nodes_modes", _INTS), attr("nodes_truenodeids", _INTS),
           attr("nodes_falsenodeids", _INTS), attr("nodes_trueleafs", _INTS),
           attr("nodes_falseleafs", _INTS), attr("nodes_missing_value_tracks_true", _INTS, ()),
           attr("leaf_targetids", _INTS), attr("leaf_weights", _TENSOR),
           attr("tree_roots", _INTS), attr("membership_values", _TENSOR, None),
           attr("n_targets", _I), attr("aggregate_function", _I, 1, range(4)),
           attr("post_transform", _I, 0, range(5))),
    doc="ai.onnx.ml TreeEnsemble: each sample walks every tree to a leaf; the leaves' "
        "weights are aggregated per target, then post-transformed.",
))


# -- LabelEncoder -----------------------------------------------------------------------------
def _infer_label_encoder(inputs: Sequence[TensorType], attrs: Attrs) -> tuple[TensorType, ...]:
    x = inputs[0]
    keys, values = attrs["keys"], attrs["values"]
    key_dtype = DType.from_numpy(keys.dtype)
    if x.dtype is not key_dtype:
        raise DTypeError(f"LabelEncoder input has dtype {x.dtype}; its keys are {key_dtype}")
    if keys.shape != values.shape or keys.ndim != 1:
        raise ShapeError(f"LabelEncoder keys {keys.shape} and values {values.shape} must be "
                         f"1-D of one length")
    value_dtype = DType.from_numpy(values.dtype)
    for dtype, what in ((key_dtype, "keys"), (value_dtype, "values")):
        if dtype not in LABEL_ENCODER_DTYPES:
            raise DTypeError(f"LabelEncoder {what} of dtype {dtype} are not supported")
    return (x.with_dtype(value_dtype),)


def _label_encoder(x: np.ndarray, *, keys: np.ndarray, values: np.ndarray,
                   default: np.ndarray) -> np.ndarray:
    out = np.empty(x.shape, values.dtype)
    out[...] = default.reshape(-1)[0]
    if keys.dtype.kind == "f":  # a NaN key matches every NaN input, whatever its bits
        table = {float(k): v for k, v in zip(keys.tolist(), values) if not math.isnan(k)}
        nan_value = next((v for k, v in zip(keys.tolist()[::-1], values[::-1])
                          if math.isnan(k)), None)
        flat_out = out.reshape(-1)
        for i, key in enumerate(x.reshape(-1).tolist()):
            if math.isnan(key):
                if nan_value is not None:
                    flat_out[i] = nan_value
            elif key in table:
                flat_out[i] = table[key]
        return out
    table = dict(zip(keys.tolist(), values.tolist()))  # a repeated key: the last one wins
    flat_out = out.reshape(-1)
    for i, key in enumerate(x.reshape(-1).tolist()):
        if key in table:
            flat_out[i] = table[key]
    return out


OPS.register(OpDef(
    "LabelEncoder", _infer_label_encoder, _label_encoder,
    attrs=(attr("keys", _TENSOR), attr("values", _TENSOR), attr("default", _TENSOR)),
    doc="ai.onnx.ml LabelEncoder: each element found among the keys becomes the value at "
        "the key's position (the last of repeated keys), any other the default.",
))
