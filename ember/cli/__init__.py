"""The `ember` command (console script `ember`, and `python -m ember`).

main.py holds the parser and the general commands, run.py `ember run`, inputs.py the random
inputs read from the graph, args.py what the commands share (shapes, input files, the
target, usage errors, exit codes), cache.py `ember cache ...`, tune.py `ember tune` and
quantize.py `ember quantize`.
"""

from __future__ import annotations

from ember.cli.main import main

__all__ = ["main"]
