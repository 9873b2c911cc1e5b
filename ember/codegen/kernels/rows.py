"""What the nn kernels share: the per-row launch parameters (`RowParams`, chosen per device
family by `choose_row_params` unless the TuningDB has them: `row_params_for`, kind "rows" in
params.py) and small rendering helpers (index type, literals, loads).

A *row* kernel (softmax, layer/instance norm, global pooling) gives each row either one
work-item (LOCAL = 1) or one work-group of LOCAL work-items that combine partial results in
local memory. One work-item per row is right when rows are many; a work-group per row when a
few long rows would leave the device idle (or, on GPUs, when neighbouring work-items would
otherwise read addresses a whole row apart).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ember.codegen.csrc import compute_type, load_expr, store_stmt
from ember.codegen.families import Target
from ember.codegen.types import IN, OUT, Kernel, Launch, Lowered, NodeSpec
from ember.codegen.params import Checked, Lookup, ParamKind, params_for, register_kind, tuning_key
from ember.ir import DType

__all__ = [
    "RowParams", "choose_row_params", "row_params_for", "row_launch",
    "loader", "storer",
    "accumulator", "MAX_LOCAL",
]

MAX_LOCAL = 256  # the largest work-group a row kernel asks for


@dataclass(frozen=True)
class RowParams(Checked):
    """Tunables of a row kernel."""

    local: int  # work-items per row: 1, or a power of two

    def violations(self, target: Target, acc_bytes: int = 4) -> list[str]:
        """The constraints these params break, each with its reason (empty: valid)."""
        local, bad = self.local, []
        if local < 1 or local & (local - 1):
            bad.append(f"local={local}: must be a power of two (the reduction tree halves)")
        if local > target.traits.max_work_group_size:
            bad.append(f"local={local}: exceeds the device's max work-group size "
                       f"{target.traits.max_work_group_size}")
        if local > 1 and local * acc_bytes > target.traits.local_mem_bytes:
            bad.append(f"local={local}: scratch of {local * acc_bytes} bytes exceeds "
                       f"local memory {target.traits.local_mem_bytes}")
        return bad


    @property
    def steps(self) -> tuple[int, ...]:
        """The reduction tree: local/2, local/4, ..., 1."""
        out, s = [], self.local // 2
        while s:
            out.append(s)
            s //= 2
        return tuple(out)


def _pow2_floor(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def choose_row_params(rows: int, n: int, inner: int, target: Target,
                      acc_bytes: int = 4) -> RowParams:
    """LOCAL for `rows` rows of `n` elements (elements `inner` apart) on a target."""
    traits, family = target.traits, target.family
    cap = _pow2_floor(min(MAX_LOCAL, traits.max_work_group_size,
                          max(traits.local_mem_bytes // max(acc_bytes, 1), 1)))
    if n < 64 or cap < 2:
        return RowParams(1)
    if family.is_gpu:
        # With inner > 1 neighbouring rows are neighbouring addresses: one item per row
        # reads coalesced, as long as there are enough rows to fill the device.
        if inner > 1 and rows >= 64 * traits.compute_units:
            return RowParams(1)
        return RowParams(min(cap, max(family.simd_width, _pow2_floor(n // 8))))
    # CPU: a work-group runs on one core, so split rows only when they are too few to give
    # every core one; then LOCAL lanes let the vectorizer work across the row.
    if rows >= 2 * traits.compute_units or n < 256:
        return RowParams(1)
    return RowParams(min(cap, 16))


def row_params_for(spec: NodeSpec, rows: int, n: int, inner: int, target: Target,
                   acc_bytes: int = 4) -> Lookup:
    """A row kernel's LOCAL: tuned on this device (the TuningDB's entry for the problem),
    else `choose_row_params`'s rule for the shape, which knows more than a per-family
    constant could."""
    lookup = params_for("rows", tuning_key(spec), target, acc_bytes)
    if lookup.level == "device":
        return lookup
    chosen = choose_row_params(rows, n, inner, target, acc_bytes)
    return Lookup("rows", lookup.key, chosen, "family",
                  f"rule for {rows} rows of {n} on family {target.family.name}")


def row_launch(rows: int, params: RowParams) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(global, local) sizes of a row kernel."""
    if params.local > 1:
        return (rows * params.local,), (params.local,)
    return (rows,), None






def accumulator(*dtypes: DType) -> str:
    """The C type sums are kept in: double when any tensor is float64, else float."""
    return "double" if DType.FLOAT64 in dtypes else "float"


def loader(dtype: DType, pointer: str) -> Callable[[str], str]:
    """For templates: load(offset) -> C expression of one element in its compute type."""
    return lambda offset: load_expr(dtype, pointer, f"({offset})") if dtype is DType.FLOAT16 \
        else f"({compute_type(dtype)}){pointer}[{offset}]"


def storer(dtype: DType, pointer: str) -> Callable[[str, str], str]:
    """For templates: store(offset, value) -> C statement writing one element."""
    def store(offset: str, value: str) -> str:
        if dtype is DType.FLOAT16:
            return store_stmt(dtype, pointer, offset, value)
        return store_stmt(dtype, pointer, offset, f"({dtype.cl_name})({value})")

    return store


def row_lowered(kernel: Kernel, rows: int, params: RowParams,
                args: tuple[tuple[str, int], ...] = ((IN, 0), (OUT, 0)),
                tuning: Lookup | None = None) -> Lowered:
    """The one launch of a per-row kernel, sized by its row parameters."""
    global_size, local_size = row_launch(rows, params)
    return Lowered((Launch(kernel, global_size, local_size, args),),
                   notes=(f"local={params.local}",), tuning=tuning)


# -- the tunable kind, registered beside its params ----------------------------------------
# Row kernels' real default is a rule over the shape (rows.choose_row_params, which
# row_params_for applies); these generic sets only answer `ember info`.
ROWS_KIND = register_kind(ParamKind(
    "rows", RowParams,
    defaults={"generic": {"gpu": RowParams(64), "other": RowParams(1)}},
    axes=(("local", tuple(1 << i for i in range(MAX_LOCAL.bit_length()))),),
    own=lambda p, t, itemsize: p.violations(t, itemsize),
    shape_rule="rows.choose_row_params",
))
