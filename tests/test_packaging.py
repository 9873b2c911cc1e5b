"""Every file ember reads at run time ships in the wheel (the tests import the source tree,
so a template missing from package-data would only fail for installed users)."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_templates_and_data_are_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["ember"]
    package = ROOT / "ember"
    needed = [*package.glob("codegen/templates/*"), *package.glob("data/*")]
    assert needed
    missing = [str(p.relative_to(package)) for p in needed
               if not any(fnmatch.fnmatch(str(p.relative_to(package)), pat) for pat in patterns)]
    assert not missing, f"not in package-data: {missing}"
