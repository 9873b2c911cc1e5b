"""Reading ONNX models: files (with external data), bytes or protos, checked and brought to
an opset ember converts (13 and newer; older models go through onnx's version converter)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from onnx import version_converter

from ember.errors import ModelLoadError

__all__ = ["load_model", "MIN_OPSET", "MAX_TESTED_OPSET", "model_opset"]

log = logging.getLogger(__name__)

MIN_OPSET = 13
MAX_TESTED_OPSET = 21


def model_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


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
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise ModelLoadError(f"{where} is not a valid ONNX model: {first}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. models over 2 GB, external data missing
        log.debug("onnx checker could not run on %s: %s", where, exc)
    opset = model_opset(proto)
    if opset < MIN_OPSET:
        try:
            proto = version_converter.convert_version(proto, MIN_OPSET)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(
                f"{where} uses opset {opset}; converting it to opset {MIN_OPSET} failed: {exc}"
            ) from None
    return proto
