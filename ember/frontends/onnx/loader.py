"""Reading ONNX models: files (with external data), bytes or protos, checked and brought to
an opset ember converts (13 and newer; older models go through onnx's version converter).

ember's own checks (checks.py: opset, unsupported ops, cycles) run before onnx's checker, so
that what ember cannot compile is named by op, node and opset; whatever onnx or protobuf
then refuses becomes a ModelLoadError naming the model and what failed.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from onnx import version_converter

from ember.errors import ModelLoadError
from ember.frontends.onnx.checks import LEGACY_DOMAIN, MAX_OPSET, check_model, default_opset
from ember.frontends.onnx.importer import CONVERTERS  # filled by the package's converters

__all__ = ["load_model", "LEGACY_DOMAIN", "MIN_OPSET", "MAX_OPSET", "model_opset"]

log = logging.getLogger(__name__)

MIN_OPSET = 13


def model_opset(model: onnx.ModelProto) -> int:
    return default_opset(model)


def load_model(model: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Load and check a model; a malformed or truncated file raises ModelLoadError."""
    if isinstance(model, onnx.ModelProto):
        proto = model
        where = "the given ModelProto"
    elif isinstance(model, (bytes, bytearray)):
        where = "the given bytes"
        try:
            proto = onnx.load_model_from_string(bytes(model))
        except Exception as exc:  # noqa: BLE001 - protobuf raises several kinds
            raise ModelLoadError(f"cannot parse {where} as an ONNX model: {exc}") from None
    else:
        path = Path(model)
        where = str(path)
        if not path.is_file():
            raise ModelLoadError(f"no ONNX model at {path}")
        try:
            proto = onnx.load(str(path), load_external_data=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot read ONNX model {path}: {exc}") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelLoadError(f"{where} holds no graph (empty or truncated file?)")
    check_model(proto, where, CONVERTERS)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise ModelLoadError(f"{where} is not a valid ONNX model: {first}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. models over 2 GB, external data missing
        log.debug("onnx checker could not run on %s: %s", where, exc)
    opset = model_opset(proto)
    if 0 < opset < MIN_OPSET:  # 0: only other domains (ai.onnx.ml), nothing to convert
        if opset < 9:
            proto = _keep_opset8_scans(proto)
        try:
            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"{where} uses opset {opset}; converting it to opset {MIN_OPSET} failed: {exc}"
            ) from None
    return proto


def _keep_opset8_scans(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose top-level Scan nodes are `LEGACY_DOMAIN.Scan8` (the same inputs,
    outputs and attributes), which the version converter passes through unchanged."""
    if not any(n.op_type == "Scan" and n.domain in ("", "ai.onnx") for n in proto.graph.node):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for node in copy.graph.node:
        if node.op_type == "Scan" and node.domain in ("", "ai.onnx"):
            node.op_type, node.domain = "Scan8", LEGACY_DOMAIN
    copy.opset_import.append(onnx.helper.make_opsetid(LEGACY_DOMAIN, 1))
    return copy
