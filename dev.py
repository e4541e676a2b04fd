"""Set up the development environment and run SignalSmith or its tests.

    python3 dev.py serve      # create .venv, install core and every plugin, run `signalsmith serve`
    python3 dev.py test       # the same setup, then ruff, import-linter and the whole test suite

Needs only Python 3.11+ with pip and venv. The install is repeated only when a
pyproject.toml changed since the last one.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".signalsmith-installed"


def members() -> list[Path]:
    """The workspace members: the core first, then every plugin."""
    return [
        ROOT / "core",
        *sorted(p for p in (ROOT / "plugins").glob("*") if (p / "pyproject.toml").exists()),
    ]


def fingerprint() -> str:
    digest = hashlib.sha256()
    for member in members():
        digest.update(str(member.relative_to(ROOT)).encode())
        digest.update((member / "pyproject.toml").read_bytes())
    return digest.hexdigest()


def setup() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"SignalSmith needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    if not (BIN / "python").exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = fingerprint()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    python = str(BIN / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    editable: list[str] = []
    for member in members():
        spec = f"{member}[test]" if member.name == "core" else str(member)
        editable += ["-e", spec]
    print("installing core and plugins (editable)", flush=True)
    subprocess.run([python, "-m", "pip", "install", "--quiet", *editable], check=True)
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("serve", "test", "setup"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    setup()
    if command == "setup":
        return 0
    if command == "serve":
        os.execv(str(BIN / "signalsmith"), [str(BIN / "signalsmith"), "serve", *rest])
    for lint in (["ruff", "check", "."], ["lint-imports"]):
        checked = subprocess.run([str(BIN / lint[0]), *lint[1:]], cwd=ROOT)
        if checked.returncode != 0:
            return checked.returncode
    return subprocess.run([str(BIN / "python"), "-m", "pytest", *rest], cwd=ROOT).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
