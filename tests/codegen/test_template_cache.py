"""The compiled-template cache (render.TemplateCodeCache): a second process loads code
instead of compiling, and a damaged or unwritable cache never changes what renders."""

from __future__ import annotations

import os
from pathlib import Path

import jinja2
import pytest

from ember.codegen.render import TemplateCodeCache

TEMPLATE = "k.cl.j2"
SOURCE = "__kernel void {{ name }}(__global float* y) { y[0] = {{ value }}; }\n"


def _render(directory: Path, templates: Path) -> tuple[str, jinja2.Environment]:
    if not (templates / TEMPLATE).exists():
        templates.mkdir(parents=True, exist_ok=True)
        (templates / TEMPLATE).write_text(SOURCE)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates)),
                             undefined=jinja2.StrictUndefined,
                             bytecode_cache=TemplateCodeCache(directory))
    return env.get_template(TEMPLATE).render(name="k", value="1.0f"), env


def test_second_environment_loads_the_stored_code(tmp_path, monkeypatch) -> None:
    first, _ = _render(tmp_path / "code", tmp_path / "t")
    files = list((tmp_path / "code").glob("*.code"))
    assert len(files) == 1
    compiled: list[str] = []
    monkeypatch.setattr(jinja2.Environment, "_compile",
                        lambda self, source, filename: compiled.append(filename))
    second, _ = _render(tmp_path / "code", tmp_path / "t")
    assert second == first
    assert compiled == []  # loaded, not compiled


@pytest.mark.parametrize("damage", [b"", b"\x00garbage", b"\xe3" * 64])
def test_a_damaged_file_is_a_miss_and_is_rewritten(tmp_path, damage) -> None:
    expected, _ = _render(tmp_path / "code", tmp_path / "t")
    (path,) = (tmp_path / "code").glob("*.code")
    path.write_bytes(damage)
    again, _ = _render(tmp_path / "code", tmp_path / "t")
    assert again == expected
    assert path.read_bytes() != damage


def test_an_edited_template_misses(tmp_path) -> None:
    _render(tmp_path / "code", tmp_path / "t")
    (tmp_path / "t" / TEMPLATE).write_text(SOURCE.replace("y[0]", "y[1]"))
    text, _ = _render(tmp_path / "code", tmp_path / "t")
    assert "y[1] = 1.0f" in text
    assert len(list((tmp_path / "code").glob("*.code"))) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="file modes do not stop root")
def test_an_unwritable_directory_still_renders(tmp_path) -> None:
    directory = tmp_path / "ro"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        text, _ = _render(directory / "templates", tmp_path / "t")
        assert "__kernel" in text
        assert not list(directory.rglob("*.code"))
    finally:
        directory.chmod(0o700)


def test_a_failed_write_still_renders(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    text, _ = _render(blocker / "templates", tmp_path / "t")  # mkdir fails: the write is skipped
    assert "__kernel" in text
