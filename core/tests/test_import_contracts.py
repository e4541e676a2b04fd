"""The import-linter contracts (root pyproject.toml) cover every plugin in the repository.

`lint-imports` (run by `python3 dev.py test` and CI) holds the rules; this test makes sure a new
plugin's package is not left out of them, which would let it reach into the core unnoticed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def plugin_packages() -> set[str]:
    return {
        package.name
        for package in ROOT.glob("plugins/*/src/*")
        if (package / "__init__.py").exists()
    }


def linter_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def test_every_plugin_package_is_analysed() -> None:
    assert set(linter_config()["root_packages"]) == {"signalsmith", *plugin_packages()}


def test_the_core_may_import_no_plugin_package() -> None:
    [contract] = [c for c in linter_config()["contracts"] if c["type"] == "forbidden"]
    assert contract["source_modules"] == ["signalsmith"]
    assert set(contract["forbidden_modules"]) == plugin_packages()


def test_plugins_may_import_only_the_signalsmith_package() -> None:
    [contract] = [c for c in linter_config()["contracts"] if c["type"] == "protected"]
    assert contract["protected_modules"] == ["signalsmith.*"]
    assert contract["allowed_importers"] == ["signalsmith"]


def test_every_core_module_has_a_layer() -> None:
    """A module left out of the layers contract could import anything: each must be placed."""
    [contract] = [c for c in linter_config()["contracts"] if c["type"] == "layers"]
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    package = ROOT / "core" / "src" / "signalsmith"
    modules = {
        path.stem if path.is_file() else path.name
        for path in package.iterdir()
        if (path.suffix == ".py" or (path / "__init__.py").exists())
        and path.stem not in ("__init__", "__main__", "testing")
    }
    assert modules - layered == set(), "place these in the layers contract (pyproject.toml)"
    assert layered - modules == set(), "these layers name modules that do not exist"
