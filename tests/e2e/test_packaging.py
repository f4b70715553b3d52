"""The distribution as a user installs it: the wheel built from this tree, installed into a fresh
virtualenv.

Three promises: the wheel installs one top-level import name, `tether`; the plain install is
the SDK alone (it imports `tether.sdk` with no server dependency installed); and `tether --help`
works once the `server` extra is installed. Dependencies come from the package index this
machine reaches, pinned by requirements.lock so the run is repeatable.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers.processes import ROOT

# What the server and worker extras bring, none of which the SDK may need.
SERVER_ONLY = ["sqlalchemy", "aiosqlite", "asyncpg", "alembic", "uvloop", "click", "grpc_reflection"]
# Copied to build from; everything else in the tree is not part of the distribution's source.
SOURCES = [
    "pyproject.toml",
    "README.md",
    "gen",
    "sdk",
    "control_plane",
    "execution_worker",
    "tether_cli",
    "tether_logs",
]


def _run(args: list[str], cwd: pathlib.Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """Build the wheel from a copy of the tree, so the build leaves nothing in the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)], cwd=tmp)
    (built,) = out.glob("tether-*.whl")
    return built


def test_the_wheel_installs_one_top_level_name_and_ships_py_typed(wheel: pathlib.Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"tether"}, f"top-level names besides tether: {sorted(tops - {'tether'})}"
    for expected in [
        "tether/py.typed",
        "tether/v1/session_service_pb2.py",
        "tether/sdk/__init__.py",
        "tether/control_plane/store/migrations/env.py",
        "tether/control_plane/store/migrations/script.py.mako",
        "tether/control_plane/store/migrations/versions/0001_initial.py",
        "tether/execution_worker/__init__.py",
        "tether/cli/__init__.py",
    ]:
        assert expected in names, f"{expected} is missing from the wheel"
    # Every Python file of the mapped folders made it in (a package left out of pyproject's
    # list would be missing here and only fail on a user's machine).
    for folder, package in [
        ("sdk", "tether/sdk"),
        ("control_plane", "tether/control_plane"),
        ("execution_worker", "tether/execution_worker"),
        ("tether_cli", "tether/cli"),
        ("tether_logs", "tether/logs"),
    ]:
        for path in (ROOT / folder).rglob("*.py"):
            inside = f"{package}/{path.relative_to(ROOT / folder).as_posix()}"
            assert inside in names, f"{folder}/{path.relative_to(ROOT / folder)} is not in the wheel as {inside}"


def test_a_fresh_install_is_the_sdk_alone_and_the_server_extra_brings_the_command(
    wheel: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    pip = [
        str(py),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-c",
        str(ROOT / "requirements.lock"),
    ]
    _run([*pip, str(wheel)], cwd=tmp_path)

    probe = (
        "import importlib.util, sys\n"
        "import tether.sdk, tether.v1.session_service_pb2\n"
        "assert tether.sdk.Client and tether.sdk.AsyncClient\n"
        f"present = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m) is not None]\n"
        "assert not present, f'the plain install brought {present}'\n"
        "assert 'tether.control_plane' not in sys.modules\n"
        "print(tether.sdk.__file__)\n"
    )
    done = _run([str(py), "-c", probe], cwd=tmp_path)
    assert str(venv) in done.stdout, f"tether.sdk came from outside the fresh virtualenv: {done.stdout}"

    # Without click the command names the extra to install instead of a traceback.
    bare = subprocess.run([str(venv / "bin" / "tether"), "--help"], capture_output=True, text=True, timeout=60)
    assert bare.returncode != 0
    assert "pip install 'tether[cli]'" in bare.stderr and "Traceback" not in bare.stderr

    _run([*pip, f"tether[server] @ {wheel.as_uri()}"], cwd=tmp_path)
    helped = _run([str(venv / "bin" / "tether"), "--help"], cwd=tmp_path)
    for command in ["serve", "worker", "session", "db", "keys"]:
        assert command in helped.stdout
    served = _run([str(venv / "bin" / "tether"), "serve", "--help"], cwd=tmp_path)
    assert "--db" in served.stdout
