"""The TypeScript example client (examples/typescript/client.ts), compiled and run with node
against a real control plane process and a real Python worker (`--runtime script`).

What the client printed is checked against what the Python SDK reads back: the session, the
turn, the approval it answered, and the log itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import re
import signal
import sys

from tests.helpers.processes import ROOT, eventually, workers_connected
from tether import sdk

SCRIPT = "say hello from TypeScript\napprove deploy to staging\nsay done"
EVENT_LINE = re.compile(r"^#(\d+) (\w+)(?: (.*))?$")


@dataclasses.dataclass
class Ran:
    status: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[tuple[int, str, str]]:
        """(seq, kind, detail) of every `#seq kind detail` line the client printed."""
        found = []
        for line in self.stdout.splitlines():
            m = EVENT_LINE.match(line)
            if m:
                found.append((int(m[1]), m[2], m[3] or ""))
        return found

    def line(self, pattern: str) -> re.Match[str]:
        """The one stdout line that matches `pattern` in full."""
        found = [m for m in map(re.compile(pattern).fullmatch, self.stdout.splitlines()) if m]
        assert len(found) == 1, f"expected one line matching {pattern!r}:\n{self}"
        return found[0]

    def __str__(self) -> str:
        return f"status {self.status}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


async def start_client(
    ts_dist: pathlib.Path, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "node",
        str(ts_dist / "client.js"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> Ran:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"client did not finish in {timeout}s:\n{Ran(-9, out.decode(), err.decode())}") from None
    return Ran(proc.returncode if proc.returncode is not None else -1, out.decode(), err.decode())


async def run_client(ts_dist: pathlib.Path, *args: str, env: dict[str, str] | None = None) -> Ran:
    return await finish(await start_client(ts_dist, *args, env=env))


def start_script_worker(procs, target: str, workdir: pathlib.Path):
    workdir.mkdir(parents=True, exist_ok=True)
    return procs(
        [
            sys.executable,
            "-m",
            "tether.execution_worker",
            "--control-plane",
            target,
            "--runtime",
            "script",
            "--workdir",
            str(workdir),
            "--slots",
            "2",
        ],
        "worker",
    )


async def log(client: sdk.AsyncClient, session_id: str) -> list[sdk.Event]:
    return [e async for e in client.stream_events(session_id, stop_at_end=True)]


def printed_matches_log(ran: Ran, events: list[sdk.Event]) -> None:
    """The client printed every event of the log once, in order, with the right kind."""
    assert [(seq, kind) for seq, kind, _ in ran.events] == [(e.seq, str(e.kind)) for e in events], str(ran)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


async def test_client_runs_a_turn_and_answers_the_approval(cp_process, procs, tmp_path, ts_dist):
    start_script_worker(procs, cp_process.target, tmp_path / "w1")
    # The address from the environment, as an app's deployment would give it.
    ran = await run_client(
        ts_dist, "--idempotency-key", "order-42", SCRIPT, env={"TETHER_CONTROL_PLANE": cp_process.target}
    )
    assert ran.status == 0, str(ran)
    session_id = ran.line(r"session (ses_\w+) \(runtime script\)")[1]
    turn_id = ran.line(r"turn (trn_\w+) key=order-42")[1]

    async with sdk.AsyncClient(cp_process.target) as client:
        session = await client.get_session(session_id)
        assert session.runtime == "script" and session.turn_count == 1
        turn = await client.get_turn(session_id, turn_id)
        assert turn.state is sdk.TurnState.COMPLETED and turn.exit_code == 0
        assert turn.input == SCRIPT and turn.idempotency_key == "order-42"

        # The approval the script opened was answered by the client, with accept, exactly once.
        [request] = await client.list_requests(session_id)
        assert request.turn_id == turn_id and request.kind is sdk.RequestKind.COMMAND_APPROVAL
        assert request.summary == "deploy to staging"
        assert request.state is sdk.RequestState.RESOLVED
        assert json.loads(request.response_json) == {"decision": "accept"}
        assert f"answered {request.request_id}: " in ran.stdout

        events = await log(client, session_id)
    printed_matches_log(ran, events)
    kinds = [str(e.kind) for e in events]
    assert kinds == [
        "input_received",
        "turn_started",
        "output",
        "request_opened",
        "request_resolved",
        "output",
        "output",
        "turn_completed",
    ]
    out = "".join(e.text for e in events if e.kind is sdk.EventKind.OUTPUT)
    assert out == "hello from TypeScript\ndecision: accept\ndone\n"
    # What the client printed for each event says what happened.
    printed = {seq: detail for seq, _, detail in ran.events}
    opened = next(e for e in events if e.kind is sdk.EventKind.REQUEST_OPENED)
    assert printed[opened.seq] == f'{request.request_id} COMMAND_APPROVAL "deploy to staging" [accept, decline]'
    resolved = next(e for e in events if e.kind is sdk.EventKind.REQUEST_RESOLVED)
    assert printed[resolved.seq] == f'{request.request_id} RESOLVED {{"decision":"accept"}}'
    assert printed[events[-2].seq] == '"done\\n"' and printed[events[-1].seq] == "exit 0"
    assert ran.stdout.rstrip().endswith(f"turn {turn_id} completed with exit code 0")


async def test_a_retry_with_the_same_key_returns_the_first_turn(cp_process, procs, tmp_path, ts_dist):
    start_script_worker(procs, cp_process.target, tmp_path / "w1")
    # Connected before the first turn, which would otherwise log one turn_waiting the second lacks.
    await workers_connected(cp_process.target)
    target = ["--control-plane", cp_process.target]
    first = await run_client(ts_dist, *target, "--idempotency-key", "k1", SCRIPT)
    assert first.status == 0, str(first)
    session_id = first.line(r"session (ses_\w+) .*")[1]
    turn_id = first.line(r"turn (trn_\w+) key=k1")[1]
    # The same key again: no new turn; the client replays the first turn's events from the
    # start of the log, finds its approval already answered and leaves it so.
    again = await run_client(ts_dist, *target, "--session", session_id, "--idempotency-key", "k1", SCRIPT)
    assert again.status == 0, str(again)
    assert again.line(r"turn (trn_\w+) \(deduplicated\) key=k1")[1] == turn_id
    assert again.events == first.events
    assert re.search(r"request req_\w+ was already answered", again.stdout)
    async with sdk.AsyncClient(cp_process.target) as client:
        assert (await client.get_session(session_id)).turn_count == 1
        [request] = await client.list_requests(session_id)
        assert json.loads(request.response_json) == {"decision": "accept"}
    # A new key on the same session is a new turn, followed from the session's end.
    second = await run_client(ts_dist, *target, "--session", session_id, "--decision", "decline", SCRIPT)
    assert second.status == 0, str(second)
    assert [seq for seq, _, _ in second.events] == list(range(len(first.events) + 1, 2 * len(first.events) + 1))
    assert '"decision: decline\\n"' in [detail for _, _, detail in second.events]


async def test_resuming_from_the_cursor_neither_loses_nor_repeats_events(cp_process, procs, tmp_path, ts_dist):
    start_script_worker(procs, cp_process.target, tmp_path / "w1")
    ran = await run_client(
        ts_dist, "--control-plane", cp_process.target, "--reconnect-after", "3", "say a\nsay b\nsay c\nsay d\nexit 4"
    )
    assert ran.status == 4, str(ran)  # the turn's exit code
    assert "closed the event stream after seq 3; reopening it with after_seq=3" in ran.stderr
    session_id = ran.line(r"session (ses_\w+) .*")[1]
    async with sdk.AsyncClient(cp_process.target) as client:
        events = await log(client, session_id)
    printed_matches_log(ran, events)
    assert [d for _, k, d in ran.events if k == "output"] == ['"a\\n"', '"b\\n"', '"c\\n"', '"d\\n"']


async def test_the_client_rides_out_a_control_plane_restart(cp_process, procs, tmp_path, ts_dist):
    start_script_worker(procs, cp_process.target, tmp_path / "w1")
    async with sdk.AsyncClient(cp_process.target) as client:
        session_id = (await client.create_session("script")).session_id
    proc = await start_client(
        ts_dist, "--control-plane", cp_process.target, "--session", session_id, "say before\nsleep 2500\nsay after"
    )

    async def said_before() -> bool:
        async with sdk.AsyncClient(cp_process.target) as c:
            return any(e.text == "before\n" for e in await log(c, session_id))

    await eventually(said_before, timeout=20, what="the turn's first output")
    cp_process.stop(signal.SIGKILL)  # a crash, mid-turn, while the client follows the stream
    await asyncio.sleep(0.3)
    cp_process.start()  # the same port and database
    ran = await finish(proc)
    assert ran.status == 0, str(ran)
    assert "event stream broke" in ran.stderr and "reconnecting with after_seq=" in ran.stderr
    async with sdk.AsyncClient(cp_process.target) as client:
        events = await log(client, session_id)
    printed_matches_log(ran, events)
    assert [d for _, k, d in ran.events if k == "output"] == ['"before\\n"', '"after\\n"']


async def test_errors_print_the_status_and_reason_and_exit_non_zero(cp_process, ts_dist):
    target = ["--control-plane", cp_process.target]
    missing = await run_client(ts_dist, *target, "--session", "ses_" + "0" * 26, "say hi")
    assert missing.status == 2, str(missing)
    assert missing.stderr.startswith(f"error: NOT_FOUND (SESSION_NOT_FOUND): session 'ses_{'0' * 26}'"), str(missing)

    bad = await run_client(ts_dist, *target, "--runtime", "", "say hi")
    assert bad.status == 2, str(bad)
    assert bad.stderr.startswith("error: INVALID_ARGUMENT (INVALID_ARGUMENT): "), str(bad)
    assert "\n  runtime: " in bad.stderr  # the BadRequest's field
    async with sdk.AsyncClient(cp_process.target) as client:
        assert (await client.list_sessions()).sessions == []  # bad input changed nothing

    down = await run_client(ts_dist, "--control-plane", "127.0.0.1:1", "say hi")
    assert down.status == 2 and down.stderr.startswith("error: UNAVAILABLE: "), str(down)


async def test_bench_mode_times_real_turns(cp_process, procs, tmp_path, ts_dist):
    start_script_worker(procs, cp_process.target, tmp_path / "w1")
    ran = await run_client(ts_dist, "bench", "--control-plane", cp_process.target, "--turns", "5", "--warmup", "1")
    assert ran.status == 0, str(ran)
    result = json.loads(ran.stdout)
    assert result["turns"] == 5 and 0 < result["p50_ms"] <= result["p99_ms"] < 5000
    async with sdk.AsyncClient(cp_process.target) as client:
        session = await client.get_session(result["session_id"])
        assert session.turn_count == 6
        events = await log(client, result["session_id"])
    assert sum(e.kind is sdk.EventKind.TURN_COMPLETED for e in events) == 6
