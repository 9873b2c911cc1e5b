"""What every `ember` command reads from its arguments, parsed in one place: input shapes
(`--shape NAME=D1xD2x...`, the one syntax of run, show, tune and cache build), input files
(`--input NAME=FILE.npy`), the random inputs that fill the rest, the exit codes, and the
shape of a subcommand's function.

Commands share these so that a shape written for `ember run` works unchanged for
`ember tune` and `ember cache build`, and their errors read the same everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from ember.errors import InputError, ShapeError
from ember.frontends.dims import resolve_shapes
from ember.ir import DType

__all__ = [
    "EXIT_OK", "EXIT_CHECK_FAILED", "EXIT_ERROR", "EXIT_INTERRUPTED", "Command", "AddCommand",
    "Shape", "Signature", "add_shape_arguments", "parse_pairs", "parse_shape", "parse_shapes",
    "shape_text", "resolve_input_shapes", "load_array", "random_array", "make_feeds",
]

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # the command ran, and what it checked failed (demo, cache import)
EXIT_ERROR = 2  # an EmberError or a usage error: nothing useful was done
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT

SHAPE_METAVAR = "NAME=D1xD2x..."
SHAPE_HINT = f"give it with --shape {SHAPE_METAVAR}"

Shape = tuple[int, ...]
Signature = Mapping[str, tuple[tuple[int | str | None, ...], DType]]  # input_signature()
# A subcommand's function, and how a module registers one: add(name, function, help text)
# returns the subcommand's parser for its own arguments.
Command = Callable[[argparse.Namespace], int]
AddCommand = Callable[[str, Command, str], argparse.ArgumentParser]


class _DeprecatedShapeAlias(argparse.Action):
    """`--input-shape NAME=D1,D2,...`: the older spelling of --shape. It lands in the same
    list as --shape, rewritten to the one syntax, so scripts written for it keep working."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        name, sep, dims = str(values).rpartition("=")
        items = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, [*items, name + sep + dims.replace(",", "x")])


def add_shape_arguments(parser: argparse.ArgumentParser, text: str) -> None:
    """--shape (repeatable) and its deprecated alias --input-shape, into `args.shape`."""
    parser.add_argument("--shape", action="append", default=[], metavar=SHAPE_METAVAR,
                        help=f"{text}; repeatable")
    parser.add_argument("--input-shape", dest="shape", action=_DeprecatedShapeAlias,
                        metavar="NAME=D1,D2,...",
                        help="deprecated: the same as --shape; dims may be separated by "
                             "',' or 'x'")


def parse_pairs(items: Sequence[str], flag: str, expected: str = "NAME=VALUE",
                malformed: type[InputError | ShapeError] = InputError) -> dict[str, str]:
    """['a=1', 'b=2'] -> {'a': '1', 'b': '2'}; a name given twice is an error, an item that
    is not NAME=VALUE a `malformed` error saying what was `expected`."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name or not value:
            raise malformed(f"{flag} {item!r}: expected {expected}")
        if name in pairs:
            raise InputError(f"{flag} gives input {name!r} twice")
        pairs[name] = value
    return pairs


def parse_shape(name: str, text: str) -> Shape:
    """'1x3x224x224' -> (1, 3, 224, 224); `name` only words the error."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise ShapeError(f"--shape {name}={text}: expected dims like 1x3x224x224") from None
    if any(d < 0 for d in dims):
        raise ShapeError(f"--shape {name}={text}: dims must be >= 0")
    return dims


def parse_shapes(items: Sequence[str]) -> dict[str, Shape]:
    """['x=1x3x224x224', 'y=7'] -> {'x': (1, 3, 224, 224), 'y': (7,)}; an input given
    twice is an error."""
    pairs = parse_pairs(items, "--shape", SHAPE_METAVAR, ShapeError)
    return {name: parse_shape(name, text) for name, text in pairs.items()}


def shape_text(shape: Sequence[int]) -> str:
    """(3, 64) -> '3x64', as --shape writes it."""
    return "x".join(str(d) for d in shape)


def resolve_input_shapes(signature: Signature, given: Mapping[str, Shape],
                         given_by: str = "--shape") -> dict[str, Shape]:
    """Every input's shape from the given ones and the dims the model fixes or shares; an
    unknown input name or a dim nobody gives is an error that points at --shape."""
    return resolve_shapes({name: dims for name, (dims, _) in signature.items()}, given,
                          given_by, hint=SHAPE_HINT)


def load_array(name: str, path: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--input {name}={path}: cannot read a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"--input {name}={path}: holds several arrays (.npz); give a .npy")
    return array


def random_array(rng: np.random.Generator, shape: Shape, dtype: DType) -> np.ndarray:
    """Normal floats; small non-negative ints (safe as indices); fair bools."""
    if dtype.is_float:
        return rng.standard_normal(shape).astype(dtype.np_dtype)
    if dtype.is_integer:
        return rng.integers(0, 8, size=shape).astype(dtype.np_dtype)
    if dtype is DType.BOOL:
        return rng.random(shape) < 0.5
    raise InputError(f"cannot make random inputs of dtype {dtype}; give it with --input")


def make_feeds(signature: Signature, files: Mapping[str, str], shapes: Mapping[str, Shape],
               seed: int) -> dict[str, np.ndarray]:
    """Inputs from .npy files where given, random ones of the model's dtype elsewhere. A
    random input's shape is its --shape, or what the model fixes and the other inputs imply
    (a named dim shared with a given input); a dim still unknown is an InputError."""
    unknown = sorted((set(files) | set(shapes)) - set(signature))
    if unknown:
        raise InputError(f"unknown input(s) {unknown}; the model's inputs are {list(signature)}")
    given: dict[str, Shape] = {}
    loaded: dict[str, np.ndarray] = {}
    for name in signature:
        shape = shapes.get(name)
        if name in files:
            loaded[name] = load_array(name, files[name])
            if shape is not None and shape != loaded[name].shape:
                raise ShapeError(f"input {name!r}: --shape {shape_text(shape)} differs from "
                                 f"the file's shape {loaded[name].shape}")
            shape = loaded[name].shape
        if shape is not None:
            given[name] = shape
    resolved = resolve_input_shapes(signature, given, "--shape or --input")
    rng = np.random.default_rng(seed)
    return {name: loaded[name] if name in loaded else random_array(rng, resolved[name], dtype)
            for name, (_, dtype) in signature.items()}
