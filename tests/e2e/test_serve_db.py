"""`tether serve --db` and the port, as a real process: a --db into a folder that does not
exist is refused naming the folder (no folder, no file made), and a busy port fails before any
database file is created."""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys

from tests.helpers.processes import ROOT


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether.control_plane", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_a_db_in_a_folder_that_does_not_exist_is_refused_naming_the_folder(tmp_path: pathlib.Path) -> None:
    typo = tmp_path / "no-such" / "sub" / "t.db"
    done = _serve("--port", "0", "--db", str(typo))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"the folder {typo.parent} does not exist" in done.stderr, done.stderr
    assert not (tmp_path / "no-such").exists()  # no folder made, so no empty database either


def test_a_db_under_proc_says_what_is_wrong_not_that_the_url_is_invalid() -> None:
    done = _serve("--port", "0", "--db", "/proc/nosuch/t.db")
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert "not a valid database URL" not in done.stderr
    assert "the folder /proc/nosuch does not exist" in done.stderr, done.stderr


def test_a_busy_port_fails_before_a_database_file_is_created(tmp_path: pathlib.Path) -> None:
    db = tmp_path / "t.db"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        done = _serve("--port", str(port), "--db", str(db))
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
    assert list(tmp_path.iterdir()) == [], "a database file was made although the control plane never served"


def test_the_database_commands_name_a_plain_path_as_it_is() -> None:
    for command in (["keys", "create", "--owner", "alice"], ["db", "upgrade"]):
        done = subprocess.run(
            [sys.executable, "-m", "tether.cli", *command, "--db", "/proc/nosuch/t.db"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.startswith("Error: cannot open the database /proc/nosuch/t.db: the folder /proc/nosuch")
