"""What every `ember` command reads from its arguments, parsed in one place: input shapes
(`--shape NAME=D1xD2x...`, the one syntax of run, show, tune and cache build), input files
(`--input NAME=FILE.npy`), the random inputs that fill the rest, the target, the exit
codes and which errors are usage errors (exit 2), and the shape of a subcommand's function.

Commands share these so that a shape written for `ember run` works unchanged for
`ember tune` and `ember cache build`, and their errors read the same everywhere.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ember.cli.inputs import InputRole, random_input
from ember.errors import EmberError, InputError
from ember.frontends.dims import dims_text, resolve_shapes
from ember.ir import DType
from ember.runtime.device import OpenCLDevice, resolve_target, with_threads

__all__ = [
    "EXIT_OK", "EXIT_ERROR", "EXIT_CHECK_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED",
    "EXIT_BROKEN_PIPE", "UsageError", "as_usage", "Command", "AddCommand", "Shape", "Signature",
    "add_shape_arguments", "parse_pairs", "parse_shape", "parse_shapes", "shape_text",
    "resolve_input_shapes", "open_target", "load_array", "make_feeds", "positive_int",
    "non_negative_int",
]

# Exit codes, as README "## Command line" lists them.
EXIT_OK = 0
EXIT_ERROR = 1  # an EmberError while compiling or running: the command was fine, the work failed
EXIT_CHECK_FAILED = EXIT_ERROR  # the command ran, and what it checked failed (demo, cache import)
EXIT_USAGE = 2  # the command line cannot be done as written (argparse's code for its errors too)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader (`| head`), as shells report SIGPIPE


class UsageError(InputError):
    """The command line asks for what cannot be done: a bad flag value, a file given on it
    that cannot be read or does not fit the model. main() exits with EXIT_USAGE."""


@contextmanager
def as_usage() -> Iterator[None]:
    """Errors raised while reading the command line are usage errors, whatever ember
    module raised them (a shape the model rejects, a target that does not exist)."""
    try:
        yield
    except UsageError:
        raise
    except EmberError as exc:
        raise UsageError(str(exc)) from exc


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (0 runs nothing: a usage error, said at once)."""
    return _bounded_int(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0."""
    return _bounded_int(text, 0)


def _bounded_int(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
    return value


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


def parse_pairs(items: Sequence[str], flag: str, expected: str = "NAME=VALUE"
                ) -> dict[str, str]:
    """['a=1', 'b=2'] -> {'a': '1', 'b': '2'}; a name given twice, or an item that is not
    NAME=VALUE (saying what was `expected`), is a usage error."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name or not value:
            raise UsageError(f"{flag} {item!r}: expected {expected}")
        if name in pairs:
            raise UsageError(f"{flag} gives input {name!r} twice")
        pairs[name] = value
    return pairs


def parse_shape(name: str, text: str) -> Shape:
    """'1x3x224x224' -> (1, 3, 224, 224); `name` only words the error."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"--shape {name}={text}: expected dims like 1x3x224x224") from None
    if any(d < 0 for d in dims):
        raise UsageError(f"--shape {name}={text}: dims must be >= 0")
    return dims


def parse_shapes(items: Sequence[str]) -> dict[str, Shape]:
    """['x=1x3x224x224', 'y=7'] -> {'x': (1, 3, 224, 224), 'y': (7,)}; an input given
    twice is an error."""
    pairs = parse_pairs(items, "--shape", SHAPE_METAVAR)
    return {name: parse_shape(name, text) for name, text in pairs.items()}


def shape_text(shape: Sequence[int]) -> str:
    """(3, 64) -> '3x64', as --shape writes it."""
    return "x".join(str(d) for d in shape)


def resolve_input_shapes(signature: Signature, given: Mapping[str, Shape],
                         given_by: str = "--shape") -> dict[str, Shape]:
    """Every input's shape from the given ones and the dims the model fixes or shares; an
    unknown input name or a dim nobody gives is a usage error that points at --shape."""
    with as_usage():
        return resolve_shapes({name: dims for name, (dims, _) in signature.items()}, given,
                              given_by, hint=SHAPE_HINT)


def open_target(target: str | None, threads: int | None = None) -> OpenCLDevice | None:
    """The device --target names (None: numpy), limited to --threads; a target that does
    not exist here is a usage error."""
    with as_usage():
        return with_threads(resolve_target(target), threads)


def load_array(name: str, path: str) -> np.ndarray:
    """The .npy file of `--input name=path`; a missing or unreadable one is a usage error."""
    where = f"--input {name}={path}"
    if not Path(path).is_file():
        raise UsageError(f"{where}: no such file")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{where}: cannot read a .npy array: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise UsageError(f"{where}: holds several arrays (.npz); give a .npy")
    return array


def _check_fits(name: str, path: str, array: np.ndarray, dims: Sequence[int | str | None],
                dtype: DType) -> None:
    """An --input file against the model's input: its dtype, rank and fixed dims."""
    if array.dtype != dtype.np_dtype:
        raise UsageError(f"--input {name}={path}: input {name!r} expects dtype {dtype}, got "
                         f"{array.dtype}")
    if array.ndim != len(dims) or any(isinstance(d, int) and d != size
                                      for d, size in zip(dims, array.shape)):
        raise UsageError(f"--input {name}={path}: shape {array.shape} does not fit input "
                         f"{name!r} {dims_text(tuple(dims))}")


def make_feeds(signature: Signature, files: Mapping[str, str], shapes: Mapping[str, Shape],
               seed: int, roles: Mapping[str, InputRole] | None = None
               ) -> dict[str, np.ndarray]:
    """Inputs from .npy files where given, random ones elsewhere, as `roles` says (ids,
    masks... see inputs.py; by the dtype alone without). A random input's shape is its
    --shape, or what the model fixes and the other inputs imply (a named dim shared with a
    given input); a dim still unknown, or a file that does not fit, is a usage error."""
    for flag, names in (("--input", files), ("--shape", shapes)):
        unknown = sorted(set(names) - set(signature))
        if unknown:
            raise UsageError(f"{flag} names unknown input(s) {unknown}; the model's inputs "
                             f"are {list(signature)}")
    given: dict[str, Shape] = {}
    loaded: dict[str, np.ndarray] = {}
    for name, (dims, dtype) in signature.items():
        shape = shapes.get(name)
        if name in files:
            loaded[name] = load_array(name, files[name])
            _check_fits(name, files[name], loaded[name], dims, dtype)
            if shape is not None and shape != loaded[name].shape:
                raise UsageError(f"input {name!r}: --shape {shape_text(shape)} differs from "
                                 f"the file's shape {loaded[name].shape}")
            shape = loaded[name].shape
        if shape is not None:
            given[name] = shape
    resolved = resolve_input_shapes(signature, given, "--shape or --input")
    rng = np.random.default_rng(seed)
    roles = roles or {}
    with as_usage():
        return {name: loaded[name] if name in loaded
                else random_input(rng, resolved[name], dtype, roles.get(name))
                for name, (_, dtype) in signature.items()}
