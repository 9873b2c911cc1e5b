"""`python -m ember`: the same command as the `ember` console script."""

from __future__ import annotations

from ember.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
