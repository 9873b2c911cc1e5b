"""How a model's inputs are given and its outputs asked for, the same for a compiled model
(compiler.py) and a loaded bundle (loaded.py): arrays by input name, by position, or one
dict as onnxruntime takes them, checked against the model's signature before anything runs;
`run(output_names, feeds)` as onnxruntime's InferenceSession.run."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ember.errors import DTypeError, InputError, ShapeError
from ember.frontends.dims import bind_named_dims, dims_text
from ember.ir import DType

__all__ = ["Signature", "bind_feeds", "select_outputs"]

Signature = Mapping[str, tuple[tuple[int | str | None, ...], DType]]


def bind_feeds(signature: Signature, args: Sequence[Any], kwargs: Mapping[str, Any]
               ) -> dict[str, np.ndarray]:
    """The call's arrays by input name, in the signature's order; InputError, DTypeError or
    ShapeError naming the input for anything that does not fit."""
    names = list(signature)
    if len(args) == 1 and isinstance(args[0], Mapping):
        # one dict of feeds, as onnxruntime takes them: no array is a Mapping
        if kwargs:
            raise InputError("give the inputs as one dict or by name, not both")
        args, kwargs = (), args[0]
        not_names = [k for k in kwargs if not isinstance(k, str)]
        if not_names:
            raise InputError(f"feed dict keys are input names; got {not_names[:3]}; the "
                             f"model's inputs are {names}")
    if len(args) > len(names):
        raise InputError(f"model takes {len(names)} input(s) {names}, got {len(args)} "
                         f"positional")
    feeds: dict[str, Any] = dict(zip(names, args))
    for name, value in kwargs.items():
        if name not in signature:
            raise InputError(f"unknown input {name!r}; the model's inputs are {names}")
        if name in feeds:
            raise InputError(f"input {name!r} given both by position and by name")
        feeds[name] = value
    missing = [n for n in names if n not in feeds]
    if missing:
        raise InputError(f"missing input(s) {missing}; the model's inputs are {names}")
    bound = {}
    for name in names:
        dims, dtype = signature[name]
        array = np.asarray(feeds[name])
        if dtype is DType.STRING and array.dtype.kind == "U":  # numpy's fixed-width text
            array = array.astype(object)
        if array.dtype != dtype.np_dtype:
            raise DTypeError(f"input {name!r} expects dtype {dtype}, got {array.dtype}")
        if array.ndim != len(dims):
            raise ShapeError(f"input {name!r} expects rank {len(dims)} shape "
                             f"{dims_text(dims)}, got shape {array.shape}")
        for axis, (want, got) in enumerate(zip(dims, array.shape)):
            if isinstance(want, int) and want != got:
                raise ShapeError(f"input {name!r} expects shape {dims_text(dims)}, got "
                                 f"{array.shape} (dim {axis}: {got} != {want})")
        bound[name] = array
    # inputs whose dims share a name must agree on it, before anything runs
    bind_named_dims({name: dims for name, (dims, _) in signature.items()},
                    {name: array.shape for name, array in bound.items()}, "the call")
    return bound


def select_outputs(call: Callable[[Mapping[str, Any]], Mapping[str, np.ndarray]],
                   input_names: Sequence[str], all_outputs: Sequence[str],
                   output_names: Sequence[str] | None, feeds: Mapping[str, Any]
                   ) -> list[np.ndarray]:
    """`call(feeds)`'s outputs named (None: all, in the model's order) as a list in that
    order; InputError for a name the model does not have, before anything runs."""
    if isinstance(output_names, str) or not (output_names is None
                                             or isinstance(output_names, Sequence)):
        raise InputError(f"output_names is a list of output names or None, got "
                         f"{output_names!r}; the model's outputs are {list(all_outputs)}")
    wanted = list(all_outputs if output_names is None else output_names)
    unknown = [name for name in wanted if name not in all_outputs]
    if unknown:
        raise InputError(f"unknown output(s) {unknown}; the model's outputs are "
                         f"{list(all_outputs)}")
    if not isinstance(feeds, Mapping):
        raise InputError(f"feeds is a dict of input name -> array, got "
                         f"{type(feeds).__name__}; the model's inputs are {list(input_names)}")
    outputs = call(feeds)
    return [outputs[name] for name in wanted]
