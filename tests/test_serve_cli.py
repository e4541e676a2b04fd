"""What a new user meets first on the command line: `--version`, an unwritable directory,
`serve --data-dir`, and banner commands that run as printed without the virtualenv active."""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from signalsmith.embedded import free_port

if TYPE_CHECKING:
    from conftest import EmbeddedServer

# prctl(2) and capabilities(7): a root process without these obeys file permissions.
PR_CAPBSET_DROP = 24
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2


def without_venv() -> dict[str, str]:
    """A shell environment where the virtualenv is not active: no SIGNALSMITH_* setting, no
    VIRTUAL_ENV, and nothing of the venv (nor any other signalsmith) on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    path = [
        entry
        for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if entry != venv_bin and not (Path(entry) / "signalsmith").exists()
    ]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("SIGNALSMITH_") and key != "VIRTUAL_ENV"
    }
    env["PATH"] = os.pathsep.join(path)
    return env


def signalsmith(
    *args: str, cwd: Path | None = None, **options: object
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "signalsmith", *args],
        cwd=cwd,
        env=without_venv(),
        capture_output=True,
        text=True,
        timeout=120,
        **options,  # type: ignore[arg-type]
    )


def test_version_names_the_core_and_every_plugin() -> None:
    result = signalsmith("--version")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"signalsmith {metadata.version('signalsmith')}"
    assert f"  auth-writekey {metadata.version('signalsmith-auth-writekey')}" in lines
    assert f"  warehouse-clickhouse {metadata.version('signalsmith-warehouse-clickhouse')}" in lines


def without_root_overrides() -> None:
    """A ``preexec_fn``: the child, even run by root, may not write where permissions say no.

    Dropping the capabilities from the bounding set before exec removes them from what the
    executed program gets (running as another user instead would lose the root-only Python).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture
def unwritable_dir() -> Iterator[tuple[Path, dict[str, object]]]:
    """A directory this test's server may not write to, and how to run a process so."""
    path = Path(tempfile.mkdtemp(prefix="ss-readonly-"))
    path.chmod(0o555)
    run_as: dict[str, object] = {}
    if os.geteuid() == 0:
        if sys.platform != "linux":
            pytest.skip("root writes anywhere; dropping that needs Linux capabilities")
        run_as = {"preexec_fn": without_root_overrides}
    yield path, run_as
    path.chmod(stat.S_IRWXU)
    path.rmdir()


def test_an_unwritable_working_directory_is_one_line_naming_the_fix(
    unwritable_dir: tuple[Path, dict[str, object]],
) -> None:
    path, run_as = unwritable_dir
    result = signalsmith("serve", "--port", str(free_port()), cwd=path, **run_as)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("signalsmith serve: cannot create the data directory "), line
    assert str(path / ".signalsmith") in line and "--data-dir" in line, line


def test_banner_commands_run_as_printed_without_the_venv(
    embedded_server: Callable[..., EmbeddedServer], tmp_path: Path
) -> None:
    workdir, data_dir = tmp_path / "work", tmp_path / "data"
    workdir.mkdir()
    console_script = str(Path(sys.executable).parent / "signalsmith")
    served = embedded_server(
        workdir, free_port(), args=("--data-dir", str(data_dir)), launcher=(console_script,)
    )
    assert served.field("Data directory") == str(data_dir)
    assert (data_dir / "redis").is_dir() and not (workdir / ".signalsmith").exists()
    read_it_back = served.banner.split("Read it back: ", 1)[1].splitlines()[0]
    # The installed command by its path (the venv is not under the working directory), with
    # the data directory it must read.
    assert read_it_back.startswith(f"SIGNALSMITH_DATA_DIR={data_dir} {console_script} sql "), (
        read_it_back
    )

    def run(command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", command],
            cwd=workdir,
            env=without_venv(),
            capture_output=True,
            text=True,
            timeout=120,
        )

    sent = run(served.curl)
    assert sent.returncode == 0 and '"accepted":1' in sent.stdout, sent.stdout + sent.stderr
    deadline = time.monotonic() + 60
    while True:
        result = run(read_it_back.replace("sql ", "sql --format json ", 1))
        if result.returncode == 0 and json.loads(result.stdout):
            break
        assert time.monotonic() < deadline, result.stdout + result.stderr
        time.sleep(0.5)
    assert json.loads(result.stdout)[0]["event_text"] == "Hello SignalSmith"
