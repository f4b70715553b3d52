"""`make demo` as a newcomer runs it: it must finish, and its failover step must really happen.

The demo runs as its own process (it starts a control plane and two workers of its own) with
its output piped, the way `make demo | less` would see it: no colour.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

from tests.helpers.processes import ROOT
from tether.cli.demo import colour_enabled

DEMO_TIMEOUT_S = 90  # it takes about 5 s; a hang must not outlive the test


def run_demo() -> str:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=env,
        start_new_session=True,  # its control plane and workers go with it on a timeout
    )
    try:
        out, _ = proc.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"the demo did not end within {DEMO_TIMEOUT_S}s:\n{out.decode()}") from None
    text = out.decode()
    assert proc.returncode == 0, text
    return text


def turn_lines(out: str, command: str) -> str:
    """The demo's lines for the first turn with input `command`, up to its terminal event."""
    assert f"$ {command}\n" in out, out
    return out.split(f"$ {command}\n", 1)[1].split("turn_completed", 1)[0]


def test_the_demo_survives_a_sigkill_and_restores_onto_a_chosen_worker():
    out = run_demo()

    assert "\x1b[" not in out, "no colour or cursor codes when the output is piped"
    assert "All processes stopped." in out

    # Step 6: the worker holding the session is SIGKILLed; the next turn runs on the other one
    # and prints the inputs of the turns before the kill, which only the control plane had.
    kill = re.search(r"SIGKILL (worker-[ab]) \(pid \d+\)", out)
    assert kill, out
    killed = kill.group(1)
    other = {"worker-a": "worker-b", "worker-b": "worker-a"}[killed]
    before, after = out[: kill.start()], out[kill.end() :]
    assert f"started on {killed}" in turn_lines(before, "say I keep bees"), "the killed worker held the session"
    recall_turn = turn_lines(after, "recall")
    assert f"started on {other}" in recall_turn, recall_turn
    assert "stdout: recalled: say my name is Ada" in recall_turn
    assert "stdout: recalled: say I keep bees" in recall_turn
    assert re.search(rf"failover: the next turn ran on {other} at lease epoch [2-9]", after), after
    # The shell session's notes.txt (step 1) was on the killed worker too, and is read on the other.
    files_turn = turn_lines(after, "cat notes.txt")
    assert f"started on {other}" in files_turn and "stdout: notes" in files_turn, files_turn
    assert f"notes.txt, written on {killed} in step 1, is on {other}" in " ".join(after.split()), after

    # Step 7: the killed worker comes back and RestoreSession puts the session on it by name.
    restore = after.split("7. RestoreSession", 1)[1]
    assert re.search(rf"RestoreSession: ses_\w+ now held by {killed}, lease epoch \d+", restore), restore
    restored_turn = turn_lines(restore, "recall; say and still counting")
    assert f"started on {killed}" in restored_turn, restored_turn
    assert "stdout: recalled: say my name is Ada" in restored_turn
    assert "stdout: recalled: recall" in restored_turn, "the turn run after the failover is remembered too"


def test_the_demo_is_coloured_on_a_terminal():
    """On a terminal (a pty here) headings, workers and results are coloured, and the setup
    progress line is redrawn in place."""
    primary, secondary = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"} | {"TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether.cli.demo"],
        stdin=subprocess.DEVNULL,
        stdout=secondary,
        stderr=secondary,
        cwd=ROOT,
        env=env,
        start_new_session=True,
    )
    os.close(secondary)
    out, deadline = b"", time.monotonic() + DEMO_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if select.select([primary], [], [], 1)[0]:
                try:
                    chunk = os.read(primary, 65536)
                except OSError:  # EIO: the demo and everything it started closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
        else:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"the demo did not end within {DEMO_TIMEOUT_S}s:\n{out.decode(errors='replace')}")
    finally:
        os.close(primary)
    assert proc.wait(30) == 0, out.decode(errors="replace")
    text = out.decode()
    assert "\x1b[1m6. A session outlives its worker" in text, "bold headings"
    assert re.search(r"\x1b\[3[56]mworker-[ab]\x1b\[0m", text), "coloured worker names"
    assert "\x1b[32mturn_completed: exit code 0\x1b[0m" in text, "green for a completed turn"
    assert "\r\x1b[2K" in text, "the progress line is redrawn in place"


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_colour_only_on_a_terminal_and_never_with_no_color():
    assert colour_enabled(_Stream(tty=True), {"TERM": "xterm-256color"})
    assert not colour_enabled(_Stream(tty=False), {"TERM": "xterm-256color"})
    assert not colour_enabled(_Stream(tty=True), {"TERM": "xterm", "NO_COLOR": "1"})
    assert colour_enabled(_Stream(tty=True), {"NO_COLOR": ""}), "an empty NO_COLOR does not count (no-color.org)"
    assert not colour_enabled(_Stream(tty=True), {"TERM": "dumb"})
