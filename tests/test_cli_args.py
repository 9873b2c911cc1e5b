"""What the `ember` commands share (ember/cli/args.py): one shape syntax for run, show, tune
and cache build, its deprecated alias --input-shape, random inputs; and the cli modules'
imports among themselves."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from ember.cli import main
from ember.cli.args import UsageError, parse_shapes
from ember.cli.inputs import random_input
from ember.cli.main import build_parser
from ember.ir import DType

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "ember" / "data" / "digits_mlp.onnx"  # input (batch, 64)
SHAPED_COMMANDS = [["run"], ["show"], ["tune"], ["cache", "build"]]


def test_parse_shapes():
    assert parse_shapes(["x=1x3x224x224", "y=7", "z=2X0"]) == {
        "x": (1, 3, 224, 224), "y": (7,), "z": (2, 0)}
    for bad in (["x"], ["x="], ["x=1xa"], ["=3"], ["x=-1"], ["x=1,3"], ["x=1xx3"]):
        with pytest.raises(UsageError, match="--shape"):
            parse_shapes(bad)
    with pytest.raises(UsageError, match="twice"):
        parse_shapes(["x=1", "x=2"])


@pytest.mark.parametrize("command", SHAPED_COMMANDS, ids=" ".join)
def test_every_command_reads_the_same_shapes(command):
    """--shape and the old --input-shape (with ',' or 'x') land in one list, in order, in
    the one syntax."""
    args = build_parser().parse_args([*command, "m.onnx", "--shape", "a=2x3",
                                      "--input-shape", "b=4,5", "--input-shape", "c=6x7"])
    assert args.shape == ["a=2x3", "b=4x5", "c=6x7"]
    assert parse_shapes(args.shape) == {"a": (2, 3), "b": (4, 5), "c": (6, 7)}
    assert build_parser().parse_args([*command, "m.onnx"]).shape == []


@pytest.mark.parametrize("command", SHAPED_COMMANDS, ids=" ".join)
def test_help_shows_one_syntax_and_the_alias_as_deprecated(command, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*command, "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--shape NAME=D1xD2x..." in text
    assert "--input-shape NAME=D1,D2,... deprecated: the same as --shape" in text


def test_run_takes_the_old_spelling(capsys):
    for flag, dims in (("--input-shape", "2,64"), ("--shape", "2x64")):
        assert main(["run", str(MLP), flag, f"input={dims}", "--target", "cpu",
                     "--repeat", "1"]) == 0
        assert "input  input: shape (2, 64) float32  from random" in capsys.readouterr().out


def test_random_inputs_follow_the_dtype():
    """Without a role from the graph: normal floats, small non-negative ints, True."""
    rng = np.random.default_rng(0)
    floats = random_input(rng, (3, 4), DType.FLOAT16)
    assert floats.shape == (3, 4) and floats.dtype == np.float16
    ints = random_input(rng, (50,), DType.INT64)
    assert ints.dtype == np.int64 and ints.min() >= 0 and ints.max() < 8
    bools = random_input(rng, (2, 3), DType.BOOL)
    assert bools.dtype == np.bool_ and bools.shape == (2, 3) and bools.all()
    assert random_input(rng, (2, 0), DType.BOOL).shape == (2, 0)


def test_cli_modules_share_only_public_names_without_a_circle():
    package = ROOT / "ember" / "cli"
    graph = nx.DiGraph()
    for path in package.glob("*.py"):
        graph.add_node(path.stem)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ember.cli."):
                target = node.module.removeprefix("ember.cli.")
                graph.add_edge(path.stem, target)
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {target}"
    assert nx.is_directed_acyclic_graph(graph), list(nx.simple_cycles(graph))
