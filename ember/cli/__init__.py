"""The `ember` command (console script `ember`, and `python -m ember`).

main.py holds the parser and the general commands, args.py what the commands share (shapes,
input files, exit codes), cache.py `ember cache ...` and tune.py `ember tune`.
"""

from __future__ import annotations

from ember.cli.main import main

__all__ = ["main"]
