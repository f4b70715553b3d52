"""ExportSession / ImportSession end to end: a bundle carries a session's turns, events and
snapshots between control planes (SQLite to PostgreSQL included) and the imported session's
next turn rehydrates the same model-visible history on a worker that never saw it; every bad
bundle is refused, naming the line, with nothing stored; the CLI writes and reads the file."""

from __future__ import annotations

import asyncio
import json
import pathlib

import pytest
from click.testing import CliRunner

from tests.helpers.pg import fresh_database
from tests.helpers.processes import FAST, eventually
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.domain.access import Limits
from tether.sdk.cli import session as session_cli


async def _run(client: sdk.AsyncClient, session_id: str, text: str) -> str:
    turn = await client.send_input(session_id, text)
    done = await client.wait_for_turn(session_id, turn.turn_id, timeout_s=10)
    assert done.state == sdk.TurnState.COMPLETED, done
    return turn.turn_id


async def _bundle(client: sdk.AsyncClient, session_id: str) -> bytes:
    return b"".join([chunk async for chunk in client.export_session(session_id)])


async def _conversation(client: sdk.AsyncClient, session_id: str) -> tuple[list, list]:
    """What must survive a round trip: the turn list and the log, less the ids that change."""
    turns = [
        (t.input, t.state, t.final_message, t.usage, t.reverted, t.first_seq, t.last_seq, t.exit_code, t.create_time)
        async for t in client.iter_turns(session_id)
    ]
    order = {t.turn_id: i async for i, t in _enumerate(client.iter_turns(session_id))}
    events = []
    async for e in client.stream_events(session_id, stop_at_end=True):
        body = e.raw.body
        if body.HasField("history_item"):
            body.history_item.turn_id = ""
        if body.HasField("session_reverted"):  # the turns it names, by position in the turn list
            reverted = body.session_reverted
            reverted.turn_id = str(order[reverted.turn_id])
            reverted.reverted_turn_ids[:] = [str(order[t]) for t in reverted.reverted_turn_ids]
        events.append((e.seq, e.kind, body.SerializeToString(), e.create_time))
    return turns, events


async def _enumerate(items):
    i = 0
    async for item in items:
        yield i, item
        i += 1


async def _source(control_plane, client, start_worker) -> tuple[str, list[str], object]:
    w = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_export")
    await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
    session = await client.create_session("fake", labels={"team": "a"})
    ids = [await _run(client, session.session_id, text) for text in ("reply: one", "two", "reply: three")]
    await client.create_snapshot(session.session_id)  # holds turn three, which the revert then takes back
    await client.revert_session(session.session_id, ids[1])
    await client.update_session(session.session_id, title="Exported")
    return session.session_id, ids, w


async def test_a_round_trip_keeps_the_conversation_and_the_next_turn_rehydrates_it(control_plane, client, start_worker):
    source, _, w = await _source(control_plane, client, start_worker)
    bundle = await _bundle(client, source)
    lines = [json.loads(line) for line in bundle.splitlines()]
    assert lines[0]["tether_bundle"] == 2 and list(lines[1]) == ["session"] and list(lines[-1]) == ["end"]
    assert lines[-1]["end"]["turns"] == 3 and lines[-1]["end"]["snapshots"] >= 1

    imported = await client.import_session(bundle)

    assert imported.session_id != source and (imported.title, imported.labels) == ("Exported", {"team": "a"})
    assert (imported.turn_count, imported.worker_id, imported.runtime) == (3, "", "fake")
    assert await _conversation(client, imported.session_id) == await _conversation(client, source)
    source_turns = {t.turn_id async for t in client.iter_turns(source)}
    assert source_turns.isdisjoint({t.turn_id async for t in client.iter_turns(imported.session_id)})
    # The same bundle again is another session: ids are new each time.
    again = await client.import_session([bundle[:100], bundle[100:]])
    assert again.session_id not in (source, imported.session_id)

    # Its next turn runs on a worker that never held it, from the history without the reverted turn.
    await w.worker.close()
    fresh = start_worker(f"127.0.0.1:{control_plane.port}", worker_id="wkr_import")
    await eventually(lambda: fresh.worker.connected, timeout=5, what="the new worker connected")
    await _run(client, imported.session_id, "four")
    runtime, _ = fresh.registry.turns[-1]
    assert [h.text for h in runtime.started_with or []] == ["reply: one", "ran reply: one\n", "two", "ran two\n"]


async def test_sqlite_to_postgresql_gives_the_same_history_and_turn_list(tmp_path, start_worker):
    async with ControlPlane(
        Settings(port=0, db=str(tmp_path / "from.db"), timings=FAST, dev_owner="local", migrate=True)
    ) as sqlite_cp:
        async with sdk.AsyncClient(f"127.0.0.1:{sqlite_cp.port}") as client:
            source, _, w = await _source(sqlite_cp, client, start_worker)
            bundle = await _bundle(client, source)
            before = await _conversation(client, source)
            await w.worker.close()
    with fresh_database() as url:
        async with ControlPlane(Settings(port=0, db=url, timings=FAST, dev_owner="local", migrate=True)) as pg_cp:
            async with sdk.AsyncClient(f"127.0.0.1:{pg_cp.port}") as client:
                kept = await client.import_session(bundle, keep_session_id=True)
                assert kept.session_id == source
                assert await _conversation(client, source) == before
                w = start_worker(f"127.0.0.1:{pg_cp.port}", worker_id="wkr_pg")
                await eventually(lambda: w.worker.connected, timeout=5, what="worker connected")
                await _run(client, source, "on postgres")
                runtime, _ = w.registry.turns[-1]
                assert [h.text for h in runtime.started_with or []][:2] == ["reply: one", "ran reply: one\n"]
                with pytest.raises(sdk.AlreadyExistsError) as taken:
                    await client.import_session(bundle, keep_session_id=True)
                assert taken.value.reason == "SESSION_EXISTS"


def _cut(bundle: bytes, line: int, replacement: bytes | None) -> bytes:
    lines = bundle.splitlines(keepends=True)
    if replacement is None:
        del lines[line - 1 :]
    else:
        lines[line - 1] = replacement
    return b"".join(lines)


async def test_every_bad_bundle_is_refused_naming_the_line_and_nothing_is_stored(control_plane, client, start_worker):
    source, _, _ = await _source(control_plane, client, start_worker)
    bundle = await _bundle(client, source)
    count = len(bundle.splitlines())
    newer = _cut(bundle, 1, b'{"tether_bundle": 3}\n')
    bad_json = _cut(bundle, 4, b'{"turn": {"turn_id": \n')
    cases = [
        (b"", "INVALID_BUNDLE", "empty"),
        (newer, "UNSUPPORTED_BUNDLE_VERSION", "line 1: bundle format version 3"),
        (_cut(bundle, count, None), "INVALID_BUNDLE", "truncated"),
        (bundle[: len(bundle) // 2], "INVALID_BUNDLE", "line "),
        (bad_json, "INVALID_BUNDLE", "line 4: not JSON"),
        (
            _cut(bundle, 3, b'{"turn": {"turn_id": "trn_x", "state": "TURN_STATE_RUNNING"}}\n'),
            "INVALID_BUNDLE",
            "line 3",
        ),
        (_cut(bundle, 2, b'{"event": {}}\n'), "INVALID_BUNDLE", "line 2: the 'session' line must come"),
        (bundle + b'{"turn": {}}\n', "INVALID_BUNDLE", "after the 'end' line"),
        (b"[1, 2]\n", "INVALID_BUNDLE", "line 1: not a Tether session bundle"),
    ]
    stored = [s.session_id async for s in client.iter_sessions()]
    for bad, reason, says in cases:
        with pytest.raises(sdk.InvalidArgumentError) as refused:
            await client.import_session(bad)
        assert refused.value.reason == reason and says in str(refused.value), (says, refused.value)
    with pytest.raises(sdk.AlreadyExistsError):
        await client.import_session(bundle, keep_session_id=True)  # its own source
    assert [s.session_id async for s in client.iter_sessions()] == stored


async def test_a_bundle_over_the_size_limit_is_refused(tmp_path):
    settings = Settings(
        port=0,
        db=str(tmp_path / "t.db"),
        timings=FAST,
        dev_owner="local",
        migrate=True,
        limits=Limits(max_import_mib=1),
    )
    async with ControlPlane(settings) as cp, sdk.AsyncClient(f"127.0.0.1:{cp.port}") as client:
        header = b'{"tether_bundle": 1}\n'
        with pytest.raises(sdk.ResourceExhaustedError) as refused:
            await client.import_session(header + b" " * (2 << 20))
        assert "max_import_mib=1" in str(refused.value)
        assert [s async for s in client.iter_sessions()] == []


async def test_a_busy_session_is_not_exported(control_plane, client):
    session = await client.create_session("nobody-runs-this")
    await client.send_input(session.session_id, "waits")
    with pytest.raises(sdk.SessionBusyError):
        await _bundle(client, session.session_id)


async def test_the_export_and_import_commands_round_trip_through_a_file(control_plane, client, tmp_path):
    session = await client.create_session("shell", labels={"k": "v"})
    await client.send_input(session.session_id, "echo queued then interrupted")
    await client.interrupt_turn(session.session_id)
    path = tmp_path / "s.tether.jsonl"
    base = ["--control-plane", f"127.0.0.1:{control_plane.port}"]
    out = await asyncio.to_thread(
        CliRunner().invoke, session_cli, [*base, "export", session.session_id, "-o", str(path)]
    )
    assert out.exit_code == 0, out.output
    assert not pathlib.Path(f"{path}.partial").exists() and path.read_bytes().startswith(b'{"tether_bundle":2')
    to_stdout = await asyncio.to_thread(CliRunner().invoke, session_cli, [*base, "export", session.session_id])
    assert to_stdout.stdout_bytes.splitlines()[1:-1] == path.read_bytes().splitlines()[1:-1]
    back = await asyncio.to_thread(CliRunner().invoke, session_cli, [*base, "import", str(path)])
    assert back.exit_code == 0, back.output
    imported = await client.get_session(back.stdout.strip())
    assert (imported.labels, imported.turn_count, imported.title) == ({"k": "v"}, 1, "echo queued then interrupted")
