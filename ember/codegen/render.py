"""Jinja rendering of `templates/*.cl.j2` and the small helpers templates share.

Templates get only numbers, dtype names and generated identifiers: never a user string.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import math
import types
from collections.abc import Sequence
from pathlib import Path

import jinja2
import numpy as np

from ember.ir import DType
from ember.paths import default_cache_dir, write_file_atomic

__all__ = ["TemplateCodeCache", "render", "kernel_name", "c_literal", "contiguous_strides",
           "broadcast_strides"]

TEMPLATE_CODE = "templates"  # the compiled templates' folder under the cache directory


class TemplateCodeCache(jinja2.BytecodeCache):
    """Compiled templates kept as files of marshalled code objects, as Python keeps .pyc
    files: parsing and compiling the templates is a third of a warm start otherwise. A file
    is named by the template's key, its source checksum and the interpreter's magic number,
    so an edited template or another Python misses; an unreadable file is a miss too. No
    pickle (jinja2's own file cache pickles its header). A failed write is ignored: the next
    process compiles again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, bucket: jinja2.bccache.Bucket) -> Path:
        magic = importlib.util.MAGIC_NUMBER.hex()
        return self.directory / f"{bucket.key}-{bucket.checksum}-{magic}.code"

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            code = marshal.loads(self._path(bucket).read_bytes())
        except (OSError, ValueError, EOFError, TypeError):
            return
        if isinstance(code, types.CodeType):
            bucket.code = code

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:  # a cache that is cheap to rebuild: whole files, not synced to disk
            write_file_atomic(self._path(bucket), marshal.dumps(bucket.code), durable=False)
        except OSError:
            pass


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        bytecode_cache=TemplateCodeCache(default_cache_dir() / TEMPLATE_CODE),
    )


def render(template: str, **params) -> str:
    return _environment().get_template(template).render(**params)


def kernel_name(kind: str, *key_parts: object) -> str:
    """A stable identifier for a kernel: kind plus a digest of everything it depends on."""
    digest = hashlib.sha1(repr(key_parts).encode()).hexdigest()[:12]
    return f"{kind}_{digest}"


def c_literal(value: float | int | bool, dtype: DType) -> str:
    """A C literal of `value` in the compute type of `dtype`."""
    if dtype.is_float:
        value = float(value)
        if math.isnan(value):
            return "NAN"
        if math.isinf(value):
            return "INFINITY" if value > 0 else "(-INFINITY)"
        if dtype is DType.FLOAT64:
            return repr(value)
        return f"{np.float32(value)!r}f".replace("np.float32(", "").replace(")", "")
    if dtype is DType.BOOL:
        return "1" if value else "0"
    text = str(int(value))
    if dtype in (DType.INT64,):
        return f"{text}L"
    if dtype in (DType.UINT64,):
        return f"{text}UL"
    if dtype in (DType.UINT32,):
        return f"{text}U"
    return f"(({dtype.cl_name}){text})"


def contiguous_strides(shape: Sequence[int]) -> tuple[int, ...]:
    strides, acc = [], 1
    for dim in reversed(shape):
        strides.append(acc)
        acc *= max(dim, 1)
    return tuple(reversed(strides))


def broadcast_strides(in_shape: Sequence[int], out_shape: Sequence[int]) -> tuple[int, ...]:
    """Strides (in elements) to read `in_shape` at the coordinates of `out_shape`; 0 on axes
    where the input broadcasts."""
    pad = len(out_shape) - len(in_shape)
    own = contiguous_strides(in_shape)
    out = []
    for axis in range(len(out_shape)):
        k = axis - pad
        out.append(0 if k < 0 or in_shape[k] == 1 else own[k])
    return tuple(out)
