"""Row kernels for Softmax / LogSoftmax (`softmax.cl.j2`), LayerNormalization,
RMSNormalization, InstanceNormalization and GroupNormalization (`norm.cl.j2`; a group's row
is its channels' planes, scale and bias indexed by the channel), and the LRN kernel
(`lrn.cl.j2`).

The row view comes from the IR (`softmax_rows`, `layer_norm_rows`), LOCAL from
`row_params_for` (tuned, else `choose_row_params`). On CPU families softmax calls
ember_exp, Softmax keeps exp(x - max) in y between its passes where y holds it exactly (not
in half storage), and a contiguous float row (INNER == 1) is walked in vectors of a
register's width. Sums accumulate in float (double for float64 tensors or a float64
stash_type); half tensors are stored as half.
"""

from __future__ import annotations

import math

from ember.codegen.csrc import (
    broadcast_strides, extensions_for, float_literal, index_type, int_literal,
)
from ember.codegen.families import Target, vector_unit
from ember.codegen.mathlib import HELPER_WIDTHS
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.registry import kernel_builder
from ember.codegen.render import kernel_name, render
from ember.codegen.kernels.rows import RowParams, accumulator, loader, row_lowered, row_params_for, storer
from ember.codegen.params import Lookup
from ember.ir import DType
from ember.ir.ops.nn import layer_norm_rows, lrn_window, softmax_rows
from ember.ir.ops.vision import group_norm_rows

__all__ = ["build_softmax", "build_norm", "build_lrn", "affine_offset"]




def _params(spec: NodeSpec, rows: int, n: int, inner: int, target: Target, acc: str,
            given: RowParams | None) -> tuple[RowParams, Lookup | None]:
    """The given tunables (tests) or the device's (tuned, else the shape rule), validated
    either way, and the lookup that answered (for the tuner)."""
    acc_bytes = 8 if acc == "double" else 4
    lookup = None if given else row_params_for(spec, rows, n, inner, target, acc_bytes)
    params = given or lookup.params
    params.validate(target, acc_bytes)
    return params, lookup


def _softmax_vector_width(target: Target) -> int:
    """Lanes of the vectors a CPU softmax walks its row in: one vector register (from
    `vector_unit`), at most the widest ember_exp; 8 where the device does not say."""
    unit = vector_unit(target.traits)
    lanes = max(HELPER_WIDTHS) if unit is None else unit.lanes
    return max(w for w in HELPER_WIDTHS if w <= lanes)


@kernel_builder("Softmax", "LogSoftmax")
def build_softmax(spec: NodeSpec, target: Target,
                  params: RowParams | None = None) -> Lowered | None:
    x = spec.inputs[0]
    outer, n, inner = softmax_rows(x.shape, spec.attrs["axis"], spec.attrs["flatten"])
    rows = outer * inner
    if x.size == 0:
        return Lowered(())
    acc = accumulator(x.dtype)
    params, lookup = _params(spec, rows, n, inner, target, acc, params)
    log = spec.op == "LogSoftmax"
    cpu = target.family.register_tiles
    vec = _softmax_vector_width(target) if cpu and inner == 1 and acc == "float" else 1
    # exp(x - max) kept in y by the sum pass where y holds it exactly (not in half storage)
    exp_once = cpu and not log and x.dtype.cl_name == acc
    name = kernel_name("softmax", spec, params, vec, exp_once)
    source = render(
        "softmax.cl.j2",
        name=name,
        label=spec.op,
        log=log,
        nrows=rows,
        n=n,
        inner=inner,
        local=params.local,
        steps=params.steps,
        vec=vec,
        exp_once=exp_once,
        half=x.dtype is DType.FLOAT16,
        exp="ember_exp" if cpu and acc == "float" else "exp",
        idx=index_type(x.size, rows * params.local),
        ptr=x.dtype.cl_name,
        acc=acc,
        load=loader(x.dtype, "x"),
        load_y=loader(x.dtype, "y"),
        store=storer(x.dtype, "y"),
        lit=int_literal,
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    return row_lowered(kernel, rows, params, tuning=lookup)


def affine_offset(var: str, shape: tuple[int, ...], row_shape: tuple[int, ...],
                  idx: str, pos: str = "j") -> list[str]:
    """C lines setting `var` to the offset in a tensor of `shape`, broadcast to `row_shape`,
    of the element at position `pos` (j: in the row) of a `row_shape` tensor."""
    if math.prod(shape) == 1:
        return [f"const {idx} {var} = 0;"]
    if (1,) * (len(row_shape) - len(shape)) + tuple(shape) == tuple(row_shape):
        return [f"const {idx} {var} = {pos};"]
    strides = broadcast_strides(shape, row_shape)
    lines = [f"{idx} {var} = 0;", f"{idx} {var}_r = {pos};"]
    for axis in range(len(row_shape) - 1, -1, -1):
        if strides[axis]:
            lines.append(f"{var} += ({var}_r % {row_shape[axis]}) * {strides[axis]};")
        lines.append(f"{var}_r /= {row_shape[axis]};")
    return lines


@kernel_builder("LayerNormalization", "InstanceNormalization", "RMSNormalization",
                "GroupNormalization")
def build_norm(spec: NodeSpec, target: Target,
               params: RowParams | None = None) -> Lowered | None:
    x = spec.inputs[0]
    rms = spec.op == "RMSNormalization"  # a LayerNormalization without centering or bias
    layer = spec.op == "LayerNormalization" or rms
    if layer:
        rows, n = layer_norm_rows(x.shape, spec.attrs["axis"])
        axis = spec.attrs["axis"] % x.rank
        stats = bool(spec.attrs.get("stats", 0))
        stash = spec.attrs["stash_type"]
        row_shape = x.shape[axis:]
    elif spec.op == "GroupNormalization":
        rows, n = group_norm_rows(x.shape, spec.attrs["num_groups"])
        stats, stash, row_shape = False, spec.attrs["stash_type"], ()
    else:
        rows, n = x.shape[0] * x.shape[1], math.prod(x.shape[2:])
        stats, stash, row_shape = False, DType.FLOAT32, ()
    if stash is DType.FLOAT64 and not target.traits.fp64:
        return None
    if rows == 0:
        return Lowered(())
    scale_t, y_t = spec.inputs[1], spec.outputs[0]  # RMSNormalization: Y has scale's dtype
    acc = accumulator(x.dtype, scale_t.dtype, stash)
    params, lookup = _params(spec, rows, n, 1, target, acc, params)
    idx = index_type(x.size, rows * params.local)
    has_bias = len(spec.inputs) > 2
    offsets: list[str] = []
    if rms and len(scale_t.shape) > len(row_shape) and any(
            d != 1 for d in scale_t.shape[:len(scale_t.shape) - len(row_shape)]):
        # ONNX lets RMSNormalization's scale broadcast to all of X, not just to a row
        offsets += affine_offset("soff", scale_t.shape, x.shape, idx, pos="base + j")
    elif layer:
        offsets += affine_offset("soff", spec.inputs[1].shape, row_shape, idx)
        if has_bias:
            offsets += affine_offset("boff", spec.inputs[2].shape, row_shape, idx)
    elif spec.op == "GroupNormalization":  # the channel of element j of the group's row
        groups = spec.attrs["num_groups"]
        plane = max(math.prod(x.shape[2:]), 1)
        offsets += [f"const {idx} soff = (row % {groups}) * {x.shape[1] // groups} + j / {plane};",
                    f"const {idx} boff = soff;"]
    name = kernel_name("norm", spec, params)
    source = render(
        "norm.cl.j2",
        name=name,
        label=spec.op,
        nrows=rows,
        n=n,
        local=params.local,
        steps=params.steps,
        eps=float_literal(spec.attrs["epsilon"], acc),
        idx=idx,
        ptr=x.dtype.cl_name,
        scale_ptr=scale_t.dtype.cl_name,
        y_ptr=y_t.dtype.cl_name,
        acc=acc,
        rms=rms,
        bias=has_bias,
        stats=stats,
        stat_ptr=stash.cl_name,
        per_channel=spec.op == "InstanceNormalization",
        channels=x.shape[1] if not layer else 1,
        affine_offsets=offsets,
        load_x=loader(x.dtype, "x"),
        load_scale=loader(scale_t.dtype, "scale"),
        load_bias=loader(x.dtype, "bias"),
        store_y=storer(y_t.dtype, "y"),
        store_mean=storer(stash, "mean_out"),
        store_inv=storer(stash, "inv_out"),
        lit=int_literal,
    )
    kernel = Kernel(name, source, extensions_for([x.dtype, scale_t.dtype, stash]))
    args = tuple((IN, i) for i in range(len(spec.inputs))) + (
        ((OUT, 0), (OUT, 1), (OUT, 2)) if stats else ((OUT, 0),)
    )
    return row_lowered(kernel, rows, params, args, tuning=lookup)


@kernel_builder("LRN")
def build_lrn(spec: NodeSpec, target: Target) -> Lowered | None:
    x = spec.inputs[0]
    attrs = spec.attrs
    if x.size == 0:
        return Lowered(())
    before, after = lrn_window(attrs["size"])
    acc = accumulator(x.dtype)
    name = kernel_name("lrn", spec)
    source = render(
        "lrn.cl.j2",
        name=name,
        label=f"alpha={attrs['alpha']:g} beta={attrs['beta']:g} bias={attrs['bias']:g}",
        size=attrs["size"],
        channels=x.shape[1],
        plane=math.prod(x.shape[2:]),
        before=before,
        after=after,
        total=x.size,
        idx=index_type(x.size),
        ptr=x.dtype.cl_name,
        acc=acc,
        alpha_over_size=float_literal(attrs["alpha"] / attrs["size"], acc),
        beta=float_literal(attrs["beta"], acc),
        bias=float_literal(attrs["bias"], acc),
        load=loader(x.dtype, "x"),
        store=storer(x.dtype, "y"),
        lit=int_literal,
    )
    kernel = Kernel(name, source, extensions_for([x.dtype]))
    return Lowered((Launch(kernel, (x.size,), None, ((IN, 0), (OUT, 0))),))
