"""Every ``sh`` and ``python`` block in README.md and docs/*.md runs as written, or says why not.

tests/unit/test_docs.py parses every block without starting anything; this test runs them.

- Each file's blocks run in order, in a scratch directory that holds a symlink to every
  top-level entry of the checkout (``.venv``, ``Makefile``, ``node_modules``, ``examples``, ...),
  so ``make setup``, ``.venv/bin/tether`` and ``node examples/...`` work as they do in a clone,
  while what a block creates (``tether.db``, ``./w1``) stays in the scratch directory.
- ``sh`` blocks run with ``bash -e -o pipefail``, with ``.venv/bin`` on the PATH and no
  ``TETHER_*`` variable but these: a block that starts its own ``tether serve`` gets a free
  port in ``TETHER_PORT`` and that address in ``TETHER_CONTROL_PLANE``; any other block gets
  the address of a control plane (``--dev``) and a worker offering ``shell`` and ``script``
  that the test started. ``127.0.0.1:7670`` in a block is replaced by the same address. What a
  block leaves running in the background is stopped with its process group when it ends.
- ``python`` blocks run with ``.venv/bin/python`` against the test's control plane.
- Placeholders a reader fills in are filled in by the test, unless the block assigns them
  itself (``SESSION_ID=$(...)``): ``SESSION_ID`` is a shell session with one finished turn,
  ``WORKER_ID`` a spare connected worker, a ``gpu=yes`` selector finds a worker with that
  label, ``KEY_ID`` an API key in the block's ``tether.db``.
- A block that cannot run here says so on the line before its opening fence:
  ``<!-- not-run: CATEGORY: why -->``, and the test checks that the category is true of the
  block (see `NOT_RUN`): ``long-running`` (the whole suite, the benchmarks, a server or a
  follower in the foreground), ``covered-by PATH`` (a test file or folder that runs the same thing),
  ``needs-tool NAME`` (a program not installed here; once it is, the block must run),
  ``needs-codex`` (a real Codex and its credentials), ``needs-infra`` (other hosts, a
  PostgreSQL server, certificates), ``modifies-checkout`` (regenerates committed files).
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.helpers.processes import ROOT, ControlPlaneProcess, Proc, worker_args
from tests.unit.test_docs import DOCS, Block, blocks
from tether import sdk

RUN = {"sh", "bash", "shell", "python"}
MARK = re.compile(r"^<!-- not-run: (?P<category>[a-z-]+)(?: (?P<arg>\S+))?: (?P<why>\S.*\S) -->$")
DOC_ADDRESS = "127.0.0.1:7670"
BLOCK_TIMEOUT_S = 120


# -- which blocks run ----------------------------------------------------------------------


@dataclass(frozen=True)
class DocBlock:
    block: Block
    mark: str | None  # the not-run marker's text after "not-run: ", or None

    @property
    def text(self) -> str:
        return "\n".join(self.block.lines)


def doc_blocks(path: pathlib.Path) -> Iterator[DocBlock]:
    lines = path.read_text(encoding="utf-8").splitlines()
    for block in blocks(path):
        if isinstance(block, str) or block.lang not in RUN:
            continue
        before = lines[block.line - 2].strip() if block.line >= 2 else ""
        mark = before[len("<!-- not-run: ") : -len(" -->")] if before.startswith("<!-- not-run:") else None
        yield DocBlock(block, mark)


def _heading_above(block: Block) -> str:
    lines = block.path.read_text(encoding="utf-8").splitlines()[: block.line - 1]
    return next((line for line in reversed(lines) if line.startswith("#")), "")


def _foreground_server(text: str) -> bool:
    """A command that runs until stopped (a server, a worker, a follower) not sent to the
    background."""
    for line in text.splitlines():
        command = line.split(" #")[0].rstrip()
        if command.endswith("&") or not command:
            continue
        if re.search(r"\btether (serve|worker)\b(?! (list|drain|tokens|revoke|pair)\b)|worker\.js|--follow", command):
            return True
    return False


NOT_RUN: dict[str, Callable[[str, str, Block], str | None]] = {
    # Each returns why the category does not fit the block, or None when it does.
    "long-running": lambda arg, text, block: (
        None
        if re.search(r"\bmake (test|bench)\b|-m bench\b", text) or _foreground_server(text)
        else "nothing in it runs for minutes or until stopped"
    ),
    "covered-by": lambda arg, text, block: (
        None
        if arg and (ROOT / arg).exists() and arg.startswith("tests/")
        else f"{arg!r} is not a test file or folder in this repository"
    ),
    "needs-tool": lambda arg, text, block: (
        None
        if arg and arg in text and shutil.which(arg) is None
        else f"{arg!r} is installed here (or not used by the block): run it"
    ),
    "needs-codex": lambda arg, text, block: (
        None if "codex" in text.lower() or "codex" in _heading_above(block).lower() else "the block does not use Codex"
    ),
    "needs-infra": lambda arg, text, block: (
        None
        if re.search(r"\.internal\b|example\.com|\b10\.\d+\.\d+\.\d+|\.pem\b|postgresql", text)
        else "the block names no other host, database server or certificate"
    ),
    "modifies-checkout": lambda arg, text, block: (
        None
        if re.search(r"\bmake (gen|contract-baseline)\b", text)
        else "the block regenerates nothing that is committed"
    ),
}


def test_every_block_runs_or_says_why_not() -> None:
    problems = []
    for path in DOCS:
        for doc in doc_blocks(path):
            if doc.mark is None:
                continue
            m = MARK.match(f"<!-- not-run: {doc.mark} -->")
            if m is None:
                problems.append(f"{doc.block.where()}: the not-run marker reads `CATEGORY: why`, not {doc.mark!r}")
                continue
            check = NOT_RUN.get(m["category"])
            if check is None:
                problems.append(
                    f"{doc.block.where()}: unknown not-run category {m['category']!r}; use one of {sorted(NOT_RUN)}"
                )
                continue
            wrong = check(m["arg"] or "", doc.text, doc.block)
            if wrong:
                problems.append(f"{doc.block.where()}: not-run {m['category']}: {wrong}")
    assert not problems, "\n".join(problems)


def test_the_marker_check_catches_a_wrong_reason(tmp_path: pathlib.Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(
        "<!-- not-run: long-running: it is slow -->\n```sh\ntether session list\n```\n"
        "<!-- not-run: needs-tool sh: a shell -->\n```sh\nsh -c true\n```\n"
        "<!-- not-run: covered-by tests/nope.py: elsewhere -->\n```sh\nmake lint\n```\n"
        "<!-- not-run: long-running: a worker -->\n```sh\ntether worker --runtime shell\n```\n",
        encoding="utf-8",
    )
    verdicts = []
    for d in doc_blocks(doc):
        m = MARK.match(f"<!-- not-run: {d.mark} -->")
        assert m is not None
        verdicts.append(NOT_RUN[m["category"]](m["arg"] or "", d.text, d.block))
    assert verdicts[0] == "nothing in it runs for minutes or until stopped"
    assert verdicts[1] is not None and "installed" in verdicts[1]
    assert verdicts[2] is not None and "not a test file" in verdicts[2]
    assert verdicts[3] is None


# -- running them --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stage:
    """The test's control plane and worker, and where the blocks run."""

    cp: ControlPlaneProcess
    tmp: pathlib.Path
    started: list[Proc]

    @property
    def target(self) -> str:
        return self.cp.target

    def worker(self, name: str, *extra: str) -> str:
        """Start a worker (shell and script) on the test's control plane; return its id."""
        workdir = self.tmp / f"worker-{name}"
        workdir.mkdir(parents=True, exist_ok=True)
        args = [*worker_args(self.target, workdir, 2, "--runtime", "script", "--name", name, *extra)]
        self.started.append(Proc(args, self.tmp / f"worker-{name}.log"))
        with sdk.Client(self.target) as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                found = [w.worker_id for w in client.list_workers() if w.name == name and w.connected]
                if found:
                    return found[0]
                time.sleep(0.1)
        raise AssertionError(f"worker {name} did not connect:\n" + self.started[-1].output())

    def session(self) -> str:
        """A shell session with one finished turn: held by a worker, idle."""
        with sdk.Client(self.target) as client:
            session = client.create_session("shell")
            turn = client.send_input(session.session_id, "echo ready")
            done = client.wait_for_turn(session.session_id, turn.turn_id, timeout_s=30)
            assert done.state is sdk.TurnState.COMPLETED, done
            return session.session_id


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    tmp = tmp_path_factory.mktemp("doc-blocks")
    cp = ControlPlaneProcess(tmp, tmp / "tether.db")
    cp.start()
    st = Stage(cp, tmp, [])
    try:
        st.worker("docs-main")
        yield st
    finally:
        for proc in st.started:
            proc.stop(signal.SIGTERM, timeout=10)
        cp.stop()


def scratch_checkout(where: pathlib.Path) -> pathlib.Path:
    where.mkdir(parents=True)
    for entry in ROOT.iterdir():
        if entry.name != ".git":
            (where / entry.name).symlink_to(entry)
    return where


def placeholders(text: str, stage: Stage, cwd: pathlib.Path, n: int) -> str:
    """Fill in the placeholders the block does not assign itself."""

    def used(name: str) -> bool:
        return re.search(rf"(?<![$\w]){name}(?![\w=])", text) is not None

    def fill(name: str, value: str) -> None:
        nonlocal text
        text = re.sub(rf"(?<![$\w]){name}(?![\w=])", value, text)

    if "gpu=yes" in text:
        stage.worker(f"docs-gpu-{n}", "--label", "gpu=yes")
    if used("SESSION_ID"):
        fill("SESSION_ID", stage.session())
    if used("WORKER_ID"):
        fill("WORKER_ID", stage.worker(f"docs-spare-{n}"))
    if used("KEY_ID"):
        made = subprocess.run(
            [str(ROOT / ".venv" / "bin" / "tether"), "keys", "create", "--owner", "docs", "--db", "tether.db"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )
        key_id = re.search(r"\bkey_[0-9A-Z]+\b", made.stderr)
        assert key_id is not None, made.stderr
        fill("KEY_ID", key_id.group())
    return text


def run_block(doc: DocBlock, stage: Stage, cwd: pathlib.Path, n: int) -> tuple[int, str]:
    text = placeholders(doc.text, stage, cwd, n)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["NO_COLOR"] = "1"
    target = stage.target
    if doc.block.lang != "python" and re.search(r"\btether serve\b", text):
        port = free_port()
        target = f"127.0.0.1:{port}"
        env["TETHER_PORT"] = str(port)
    env["TETHER_CONTROL_PLANE"] = target
    text = text.replace(DOC_ADDRESS, target)
    if doc.block.lang == "python":
        args = [sys.executable, "-c", text]
    else:
        args = ["bash", "-e", "-o", "pipefail", "-c", text]
    log = cwd / f"block-{n}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            args,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code = popen.wait(BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = -1
        finally:
            _stop_group(popen.pid)
    output = log.read_text(errors="replace")
    if code == -1:
        output += f"\n(still running after {BLOCK_TIMEOUT_S}s; stopped)"
    return code, output


def _stop_group(pgid: int) -> None:
    """Stop what the block left running: its own process group, nothing else."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


RUNNABLE = [path for path in DOCS if any(d.mark is None for d in doc_blocks(path))]


@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_blocks_run_as_written(path: pathlib.Path, stage: Stage, tmp_path: pathlib.Path) -> None:
    cwd = scratch_checkout(tmp_path / "checkout")
    failures = []
    for n, doc in enumerate(doc_blocks(path)):
        if doc.mark is not None:
            continue
        code, output = run_block(doc, stage, cwd, n)
        if code != 0:
            tail = "\n".join(output.splitlines()[-30:])
            failures.append(f"{doc.block.where()}: the {doc.block.lang} block exited {code}:\n{tail}")
    assert not failures, "\n\n".join(failures)
