"""A bundle carries the session's workspace: every checkpoint, and each blob they name once, in
pieces of at most 1 MiB. Imported as another owner, or into another control plane, the blobs
are stored under the importing owner and a worker taking the imported session at its first
epoch restores the checkpoint from Resume and GetBlobs; a tampered blob, a blob missing from
the bundle (and not held by the importer), a blob no checkpoint names and a workspace over the
importer's limits are refused, naming the line or the limit, and store nothing of the session."""

from __future__ import annotations

import base64
import contextlib
import json
import pathlib
from collections.abc import AsyncIterator

import pytest

from tests.helpers.pg import fresh_database
from tests.helpers.processes import FAST
from tests.integration.test_workspace_blobs import Worker, _checkpoint, _worker, sha
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.domain.access import Limits

BIG = bytes(range(256)) * 10_000  # 2.5 MB: three blob lines


@contextlib.asynccontextmanager
async def _another_control_plane(db_url: str, tmp_path: pathlib.Path, **limits: int) -> AsyncIterator[ControlPlane]:
    """A second control plane on a fresh database of the same kind as `db_url`."""
    with contextlib.ExitStack() as stack:
        if "postgresql" in db_url:
            url = stack.enter_context(fresh_database())
        else:
            url = str(tmp_path / f"other-{len(list(tmp_path.glob('other-*.db')))}.db")
        settings = Settings(port=0, db=url, timings=FAST, dev_owner="local", migrate=True, limits=Limits(**limits))
        async with ControlPlane(settings) as cp:
            yield cp


async def _session_with_a_workspace(cp: ControlPlane, client: sdk.AsyncClient) -> tuple[str, list[str], list[str]]:
    """A session of two turns, each with a checkpoint; its id, the turn ids, and the digests of
    the second (latest) checkpoint's blobs."""
    w = await _worker(cp, client)
    try:
        turns = [await w.run_turn(client, "one")]
        await _checkpoint(w, client, {"a.txt": b"a", "big.bin": BIG, "empty": b""})
        turns.append(await w.run_turn(client, "two"))
        latest = await _checkpoint(w, client, {"a.txt": b"changed", "big.bin": BIG})
        return w.session_id, turns, [sha(latest[0]), sha(b"changed"), sha(BIG)]
    finally:
        await w.close()


async def _bundle(client: sdk.AsyncClient, session_id: str) -> bytes:
    return b"".join([chunk async for chunk in client.export_session(session_id)])


def _lines(bundle: bytes) -> list[dict]:
    return [json.loads(line) for line in bundle.splitlines()]


def _join(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def _minus_blob(lines: list[dict], data: bytes) -> bytes:
    """The bundle without the (one-line) blob `data`."""
    index = next(i for i, line in enumerate(lines) if line.get("blob", {}).get("digest") == sha(data))
    kept = lines[:index] + lines[index + 1 :]
    kept[-1] = {"end": kept[-1]["end"] | {"blobs": kept[-1]["end"]["blobs"] - 1}}
    return _join(kept)


async def _ids(client: sdk.AsyncClient) -> list[str]:
    return [s.session_id async for s in client.iter_sessions()]


async def test_the_bundle_carries_the_workspace_and_the_imported_session_restores_it(
    control_plane, client, db_url, tmp_path
):
    source, source_turns, latest = await _session_with_a_workspace(control_plane, client)
    bundle = await _bundle(client, source)
    lines = _lines(bundle)

    assert lines[0]["tether_bundle"] == 2
    checkpoints = [line["checkpoint"] for line in lines if "checkpoint" in line]
    assert [c["turn_id"] for c in checkpoints] == source_turns
    pieces = [line["blob"] for line in lines if "blob" in line]
    digests = [p["digest"] for p in pieces if int(p.get("offset", 0)) == 0]
    assert len(digests) == len(set(digests)) == 6  # two chunks, a, changed, big, empty: each once
    assert all(len(base64.b64decode(p.get("data", ""))) <= 1 << 20 for p in pieces)
    assert sum(p["digest"] == sha(BIG) for p in pieces) == 3
    assert (lines[-1]["end"]["checkpoints"], lines[-1]["end"]["blobs"]) == (2, 6)

    # Another owner of the same control plane: the blobs are stored again, under it.
    alice_key = await control_plane.create_api_key("owner", "alice")
    async with sdk.AsyncClient(f"127.0.0.1:{control_plane.port}", api_key=alice_key) as alice:
        imported = await alice.import_session(bundle)
        assert await control_plane.workspaces.blobs.missing("alice", digests) == []
        again = _lines(await _bundle(alice, imported.session_id))
        new_turns = [t.turn_id async for t in alice.iter_turns(imported.session_id)]
        assert [line["checkpoint"] for line in again if "checkpoint" in line] == [
            c | {"turn_id": t} for c, t in zip(checkpoints, new_turns, strict=True)
        ]
        assert sorted(line["blob"]["digest"] for line in again if "blob" in line) == sorted(p["digest"] for p in pieces)

    # Another control plane: a worker taking the imported session restores its latest checkpoint.
    async with (
        _another_control_plane(db_url, tmp_path) as other,
        sdk.AsyncClient(f"127.0.0.1:{other.port}") as there,
    ):
        moved = await there.import_session(bundle)
        w = Worker(f"127.0.0.1:{other.port}", "wkr_there")
        await w.register()
        await w.open_lease()
        try:
            w.session_id = moved.session_id
            await w.run_turn(there, "three")
            assert w.epoch == 1
            manifest = await w.resume()
            assert manifest is not None and list(manifest.chunk_digests) == [latest[0]]
            assert (manifest.file_count, manifest.total_bytes) == (2, len(b"changed") + len(BIG))
            got = await w.get(latest)
            assert got[sha(b"changed")] == b"changed" and got[sha(BIG)] == BIG and sha(got[latest[0]]) == latest[0]
        finally:
            await w.close()


@pytest.mark.parametrize("blob", [b"changed", BIG], ids=["small", "in-pieces"])
async def test_a_tampered_blob_is_refused_naming_its_line_and_a_held_copy_stays_intact(
    control_plane, client, db_url, tmp_path, blob
):
    source, _, _ = await _session_with_a_workspace(control_plane, client)
    lines = _lines(await _bundle(client, source))
    first = next(i for i, line in enumerate(lines) if line.get("blob", {}).get("digest") == sha(blob))
    last = max(i for i, line in enumerate(lines) if line.get("blob", {}).get("digest") == sha(blob))
    data = bytearray(base64.b64decode(lines[last]["blob"]["data"]))
    data[len(data) // 2] ^= 0xFF  # same size, other content, in the blob's last piece
    lines[last]["blob"]["data"] = base64.b64encode(data).decode()
    tampered = _join(lines)

    # Into a control plane that holds nothing: refused, naming the blob's line, nothing stored.
    async with (
        _another_control_plane(db_url, tmp_path) as other,
        sdk.AsyncClient(f"127.0.0.1:{other.port}") as there,
    ):
        with pytest.raises(sdk.InvalidArgumentError) as refused:
            await there.import_session(tampered)
        assert refused.value.reason == "INVALID_BUNDLE"
        assert f"line {first + 1}: blob {sha(blob)} should be {len(blob)} bytes" in str(refused.value)
        assert await _ids(there) == []
        assert await other.workspaces.blobs.missing("local", [sha(blob)]) == [sha(blob)]

    # Into the owner that holds the blob: refused too, and its stored copy is untouched.
    before = await _ids(client)
    with pytest.raises(sdk.InvalidArgumentError) as refused:
        await client.import_session(tampered)
    assert f"line {first + 1}: blob {sha(blob)}" in str(refused.value)
    assert await _ids(client) == before
    stored = [piece async for _, piece in control_plane.workspaces.blobs.read("local", [sha(blob)])]
    assert b"".join(stored) == blob


async def test_a_blob_missing_from_the_bundle_is_refused_unless_the_importer_holds_it(
    control_plane, client, db_url, tmp_path
):
    source, _, _ = await _session_with_a_workspace(control_plane, client)
    lines = _lines(await _bundle(client, source))
    without = _minus_blob(lines, b"changed")
    second_checkpoint = [i for i, line in enumerate(lines) if "checkpoint" in line][1] + 1

    async with (
        _another_control_plane(db_url, tmp_path) as other,
        sdk.AsyncClient(f"127.0.0.1:{other.port}") as there,
    ):
        with pytest.raises(sdk.InvalidArgumentError) as refused:
            await there.import_session(without)
        assert refused.value.reason == "INVALID_BUNDLE"
        assert f"line {second_checkpoint}: checkpoint at seq" in str(refused.value)
        assert sha(b"changed") in str(refused.value) and "the bundle does not carry it" in str(refused.value)
        assert await _ids(there) == []

        # A blob no checkpoint names is refused too.
        extra = lines[:-1] + [
            {"blob": {"digest": sha(b"stray"), "size": "5", "data": base64.b64encode(b"stray").decode()}},
            {"end": lines[-1]["end"] | {"blobs": lines[-1]["end"]["blobs"] + 1}},
        ]
        with pytest.raises(sdk.InvalidArgumentError) as stray:
            await there.import_session(_join(extra))
        assert f"line {len(lines)}: blob {sha(b'stray')} is named by no checkpoint" in str(stray.value)

        # A blob whose pieces do not follow on is refused at the piece that does not.
        big = [i for i, line in enumerate(lines) if line.get("blob", {}).get("digest") == sha(BIG)]
        gap = lines[: big[1]] + lines[big[1] + 1 :]
        with pytest.raises(sdk.InvalidArgumentError) as broken:
            await there.import_session(_join(gap))
        assert f"line {big[1] + 1}: blob {sha(BIG)} stops at {1 << 20} of its {len(BIG)} bytes" in str(broken.value)

        # A version-1 bundle has no workspace lines; without them it is still read.
        old = [{"tether_bundle": 1}] + lines[1:]
        first_checkpoint = next(i for i, line in enumerate(lines) if "checkpoint" in line)
        with pytest.raises(sdk.InvalidArgumentError) as v1:
            await there.import_session(_join(old))
        assert f"line {first_checkpoint + 1}: unknown line kind 'checkpoint'" in str(v1.value)
        end = {k: v for k, v in lines[-1]["end"].items() if k not in ("checkpoints", "blobs")}
        plain = await there.import_session(_join(old[:first_checkpoint] + [{"end": end}]))
        assert plain.turn_count == 2

    # The owner that holds the blob already may import the bundle without it.
    imported = await client.import_session(without)
    assert imported.session_id != source


async def test_a_workspace_over_the_importers_limits_is_resource_exhausted_naming_the_limit(
    control_plane, client, db_url, tmp_path
):
    source, _, _ = await _session_with_a_workspace(control_plane, client)
    bundle = await _bundle(client, source)
    for limits, limit in [
        ({"max_blob_bytes_per_owner": 1 << 20}, "max_blob_bytes_per_owner"),
        ({"max_workspace_files": 2}, "max_workspace_files"),
    ]:
        async with (
            _another_control_plane(db_url, tmp_path, **limits) as other,
            sdk.AsyncClient(f"127.0.0.1:{other.port}") as there,
        ):
            with pytest.raises(sdk.ResourceExhaustedError) as refused:
                await there.import_session(bundle)
            assert refused.value.reason == "WORKSPACE_LIMIT_EXCEEDED" and limit in str(refused.value)
            assert await _ids(there) == []
