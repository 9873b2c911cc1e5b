"""Converters of ONNX's ai.onnx.ml domain: TreeEnsemble, LabelEncoder, Binarizer and
ArrayFeatureExtractor.

Binarizer becomes Greater + Cast and ArrayFeatureExtractor a Gather on the last axis, ops
with device kernels. LabelEncoder's many spellings of its table (keys_floats,
keys_int64s, keys_strings, keys_tensor; the same for values and the default) become one
keys/values/default triple of arrays.
"""

from __future__ import annotations

import numpy as np
import onnx

from ember.errors import UnsupportedOpError
from ember.frontends.onnx.importer import ImportContext, onnx_op
from ember.ir import DType, Value

__all__: list[str] = []

ML = "ai.onnx.ml"

_TREE_INT_LISTS = ("nodes_featureids", "nodes_truenodeids", "nodes_falsenodeids",
                   "nodes_trueleafs", "nodes_falseleafs", "leaf_targetids", "tree_roots")


@onnx_op("TreeEnsemble", domain=ML)
def _tree_ensemble(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    attrs = {name: [int(v) for v in ctx.attr(node, name, [])] for name in _TREE_INT_LISTS}
    attrs["nodes_modes"] = [int(v) for v in np.asarray(ctx.attr(node, "nodes_modes")).reshape(-1)]
    attrs["nodes_splits"] = np.asarray(ctx.attr(node, "nodes_splits")).reshape(-1)
    attrs["leaf_weights"] = np.asarray(ctx.attr(node, "leaf_weights")).reshape(-1)
    tracks = ctx.attr(node, "nodes_missing_value_tracks_true")
    attrs["nodes_missing_value_tracks_true"] = [int(v) for v in tracks or []]
    members = ctx.attr(node, "membership_values")
    attrs["membership_values"] = None if members is None else np.asarray(members).reshape(-1)
    attrs["n_targets"] = int(ctx.attr(node, "n_targets", 1))
    attrs["aggregate_function"] = int(ctx.attr(node, "aggregate_function", 1))
    attrs["post_transform"] = int(ctx.attr(node, "post_transform", 0))
    return [ctx.add("TreeEnsemble", [ctx.input(node, 0)], attrs)]


# -- LabelEncoder -----------------------------------------------------------------------------
_LIST_KINDS = {"floats": np.float32, "int64s": np.int64, "strings": object}
# ONNX's defaults where the model names none (by the values' type)
_DEFAULTS = {"floats": -0.0, "int64s": -1, "strings": "_Unused"}


def _table(ctx: ImportContext, node: onnx.NodeProto, role: str) -> tuple[np.ndarray, str | None]:
    """keys or values as an array, and the list kind they were given as (None: a tensor)."""
    given = [(kind, ctx.attr(node, f"{role}_{kind}")) for kind in _LIST_KINDS]
    given = [(kind, v) for kind, v in given if v is not None]
    tensor = ctx.attr(node, f"{role}_tensor")
    if tensor is not None:
        given.append((None, tensor))
    if len(given) != 1:
        raise UnsupportedOpError(f"{ctx.where}: exactly one of the {role}_* attributes must "
                                 f"be set, found {len(given)}")
    kind, value = given[0]
    if kind is None:
        return np.asarray(value).reshape(-1), None
    return np.array(list(value), dtype=_LIST_KINDS[kind]).reshape(-1), kind


def _default(ctx: ImportContext, node: onnx.NodeProto, values: np.ndarray,
             kind: str | None) -> np.ndarray:
    """The value of a key not found: default_tensor goes with values_tensor, default_float
    (int64, string) with values_floats (int64s, strings); ONNX's own where none is set."""
    if kind is None:
        tensor = ctx.attr(node, "default_tensor")
        if tensor is not None:
            return np.asarray(tensor).reshape(-1)[:1].astype(values.dtype)
        fill = "_Unused" if values.dtype.kind == "O" else -1 if values.dtype.kind in "iu" else -0.0
        return np.array([fill], dtype=values.dtype)
    value = ctx.attr(node, "default_" + {"floats": "float", "int64s": "int64",
                                         "strings": "string"}[kind])
    return np.array([_DEFAULTS[kind] if value is None else value], dtype=values.dtype)


@onnx_op("LabelEncoder", domain=ML)
def _label_encoder(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    keys, _ = _table(ctx, node, "keys")
    values, kind = _table(ctx, node, "values")
    x = ctx.input(node, 0)
    x_dtype = ctx.type_of(x).dtype
    if DType.from_numpy(keys.dtype) is not x_dtype and keys.dtype.kind in "iuf":
        keys = keys.astype(x_dtype.np_dtype)  # int64s keys of an int32 input, and the like
    attrs = {"keys": keys, "values": values, "default": _default(ctx, node, values, kind)}
    return [ctx.add("LabelEncoder", [x], attrs)]


# -- ops that import as others ----------------------------------------------------------------
@onnx_op("Binarizer", domain=ML)
def _binarizer(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    x = ctx.input(node, 0)
    dtype = ctx.type_of(x).dtype
    threshold = ctx.constant(np.array(float(ctx.attr(node, "threshold", 0.0)),
                                      dtype=dtype.np_dtype))
    above = ctx.add("Greater", [x, threshold])
    return [ctx.add("Cast", [above], {"to": dtype})]


@onnx_op("ArrayFeatureExtractor", domain=ML)
def _array_feature_extractor(ctx: ImportContext, node: onnx.NodeProto) -> list[Value]:
    """The indices (any shape, flattened) pick along the last axis; a 1-D input gives one
    row (1, n), as onnxruntime does."""
    x, indices = ctx.input(node, 0), ctx.input(node, 1)
    x_type, i_type = ctx.type_of(x), ctx.type_of(indices)
    if i_type.rank != 1:
        indices = ctx.add("Reshape", [indices], {"shape": (i_type.size,)})
    picked = ctx.add("Gather", [x, indices], {"axis": x_type.rank - 1})
    if x_type.rank == 1:
        picked = ctx.add("Reshape", [picked], {"shape": (1, i_type.size)})
    return [picked]
