"""Input shapes from a model's declared dims, where a named (symbolic) dim is one dim.

A model declares each input's dims as sizes, names (ONNX dim_param: "batch_size") or
nothing. Inputs whose dims carry the same name share that dim: giving `input_ids` as
(2, 128) fixes `attention_mask`'s [batch_size, sequence_length] too, and two inputs that
disagree on it are an error naming both. A dim nobody fixed is an error naming the input
and the dim; guessing a size (1, say) would compile a model that runs and answers wrong.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ember.errors import InputError, ShapeError

__all__ = ["Dims", "dims_text", "dim_text", "is_dynamic", "check_declared", "bind_named_dims",
           "resolve_shapes"]

Dims = tuple[int | str | None, ...]  # a size, a dim name, or None (unnamed, unknown)


def dims_text(dims: Dims) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in dims) + ")"


def dim_text(dims: Dims, axis: int) -> str:
    """'dim 1 ('sequence_length')', or 'dim 0 (unnamed)'."""
    name = dims[axis]
    return f"dim {axis} ({name!r})" if isinstance(name, str) and name else f"dim {axis} (unnamed)"


def is_dynamic(signature: Mapping[str, Dims]) -> bool:
    """Whether any input has a dim that is not a fixed size."""
    return any(not isinstance(d, int) for dims in signature.values() for d in dims)


def check_declared(name: str, dims: Dims, shape: Sequence[int], given_by: str) -> None:
    """ShapeError when `shape` (from `given_by`) has another rank than the model declares
    for input `name`, or another size where the model fixes one."""
    shape = tuple(shape)
    if len(shape) != len(dims):
        raise ShapeError(f"input {name!r}: {given_by} gives rank {len(shape)} {shape}, "
                         f"the model says rank {len(dims)} {dims_text(dims)}")
    for axis, (want, got) in enumerate(zip(dims, shape)):
        if isinstance(want, int) and want != got:
            raise ShapeError(f"input {name!r}: dim {axis} is fixed at {want} by the model, "
                             f"{given_by} gives {got} (shape {shape})")


@dataclass(frozen=True)
class _Binding:
    size: int
    input: str
    axis: int


def bind_named_dims(signature: Mapping[str, Dims], shapes: Mapping[str, Sequence[int]],
                    given_by: str) -> dict[str, int]:
    """Each dim name's size, as the given shapes fix it. Two inputs (or two axes of one)
    that disagree: InputError naming both inputs, the dim name and both sizes."""
    bound: dict[str, _Binding] = {}
    for name, shape in shapes.items():
        for axis, (dim, size) in enumerate(zip(signature[name], shape)):
            if not isinstance(dim, str) or not dim:
                continue
            seen = bound.setdefault(dim, _Binding(int(size), name, axis))
            if seen.size != size:
                raise InputError(
                    f"inputs {seen.input!r} and {name!r} share dim {dim!r} but {given_by} "
                    f"gives it two sizes: {seen.size} in {seen.input!r} (dim {seen.axis}) and "
                    f"{size} in {name!r} (dim {axis})")
    return {dim: b.size for dim, b in bound.items()}


def resolve_shapes(signature: Mapping[str, Dims], given: Mapping[str, Sequence[int]],
                   given_by: str = "input_shapes", hint: str = ""
                   ) -> dict[str, tuple[int, ...]]:
    """Every input's shape: as given, or from its declared sizes and the named dims that
    the given shapes fix. Unknown names and wrong given shapes: ShapeError; a dim left
    unknown: InputError naming each such input and dim."""
    unknown = sorted(set(given) - set(signature))
    if unknown:
        raise ShapeError(f"{given_by} names unknown input(s) {unknown}; inputs: "
                         f"{list(signature)}")
    for name, shape in given.items():
        check_declared(name, signature[name], shape, given_by)
    sizes = bind_named_dims(signature, given, given_by)
    shapes: dict[str, tuple[int, ...]] = {}
    unresolved: list[str] = []
    for name, dims in signature.items():
        if name in given:
            shapes[name] = tuple(int(d) for d in given[name])
            continue
        shape = []
        for axis, dim in enumerate(dims):
            size = dim if isinstance(dim, int) else sizes.get(dim or "")
            if size is None:
                unresolved.append(f"input {name!r} {dim_text(dims, axis)}")
            shape.append(size)
        shapes[name] = tuple(shape)  # type: ignore[arg-type]  # complete when no error
    if unresolved:
        raise InputError(
            f"no size for {', '.join(unresolved)}: {given_by} does not give "
            + ("it" if len(unresolved) == 1 else "them")
            + (f" ({hint})" if hint else
               " (give the input's shape, or that of an input sharing the dim's name)"))
    return shapes
