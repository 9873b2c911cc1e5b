"""Jinja rendering of `templates/*.cl.j2` and the small helpers templates share.

Templates get only numbers, dtype names and generated identifiers: never a user string.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import marshal
import types
from pathlib import Path

import jinja2

from ember.codegen.csrc import half_load, half_store
from ember.paths import default_cache_dir, write_file_atomic

__all__ = ["TemplateCodeCache", "render", "kernel_name"]

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
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        bytecode_cache=TemplateCodeCache(default_cache_dir() / TEMPLATE_CODE),
    )
    # the C helpers kernel builders use, callable from templates too
    environment.globals.update(half_load=half_load, half_store=half_store)
    return environment


def render(template: str, **params) -> str:
    return _environment().get_template(template).render(**params)


def kernel_name(kind: str, *key_parts: object) -> str:
    """A stable identifier for a kernel: kind plus a digest of everything it depends on."""
    digest = hashlib.sha1(repr(key_parts).encode()).hexdigest()[:12]
    return f"{kind}_{digest}"
