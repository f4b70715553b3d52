"""Workspace checkpoints at the contract level, with a scripted worker against an in-process
control plane: blobs go in checked and come out only to the lease holder of a session whose
checkpoint names them; a manifest naming a missing blob or a path outside the workspace is
refused and changes nothing; a checkpoint over a limit is RESOURCE_EXHAUSTED naming the limit
and the session keeps its previous checkpoint; a fork carries the checkpoint of its turn, a
revert brings back the reverted-to turn's; purging an owner deletes its blobs."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.helpers.fake_worker import FakeWorker, completed, started
from tests.helpers.processes import FAST
from tests.integration.test_validation import _details
from tether import sdk
from tether.control_plane import ControlPlane, Settings
from tether.control_plane.domain.access import Limits
from tether.v1 import resources_pb2 as pb
from tether.v1 import worker_service_pb2 as wpb

FILE, LINK = pb.WORKSPACE_ENTRY_KIND_FILE, pb.WORKSPACE_ENTRY_KIND_SYMLINK


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def chunk_of(*entries: pb.WorkspaceEntry) -> bytes:
    return pb.WorkspaceManifestChunk(entries=entries).SerializeToString(deterministic=True)


def file_entry(path: str, data: bytes) -> pb.WorkspaceEntry:
    return pb.WorkspaceEntry(path=path, kind=FILE, mode=0o644, size=len(data), digest=sha(data))


class Worker(FakeWorker):
    """A scripted worker that also uploads blobs and snapshots with workspaces."""

    epoch = 0
    session_id = ""
    wseq = 0
    written = ("", 0)

    async def put(self, blobs: dict[str, bytes], piece: int = 128 << 10) -> wpb.PutBlobsResponse:
        async def requests() -> AsyncIterator[wpb.PutBlobsRequest]:
            first = True
            for digest, data in blobs.items():
                for offset in range(0, max(len(data), 1), piece):
                    chunk = wpb.BlobChunk(
                        digest=digest, size=len(data), offset=offset, data=data[offset : offset + piece]
                    )
                    head = {"worker_id": self.worker_id, "session_id": self.session_id, "lease_epoch": self.epoch}
                    yield wpb.PutBlobsRequest(chunks=[chunk], **(head if first else {}))
                    first = False

        return await self.stub.PutBlobs(requests(), timeout=10)

    async def missing(self, digests: list[str]) -> list[str]:
        request = wpb.FindMissingBlobsRequest(
            worker_id=self.worker_id, session_id=self.session_id, lease_epoch=self.epoch, digests=digests
        )
        return list((await self.stub.FindMissingBlobs(request, timeout=10)).missing_digests)

    async def get(self, digests: list[str], session_id: str = "", epoch: int = 0) -> dict[str, bytes]:
        request = wpb.GetBlobsRequest(
            worker_id=self.worker_id,
            session_id=session_id or self.session_id,
            lease_epoch=epoch or self.epoch,
            digests=digests,
        )
        out: dict[str, bytearray] = {}
        async for message in self.stub.GetBlobs(request, timeout=10):
            for piece in message.chunks:
                out.setdefault(piece.digest, bytearray()).extend(piece.data)
        return {k: bytes(v) for k, v in out.items()}

    async def snapshot(self, seq: int, chunks: list[bytes], files: int, size: int) -> wpb.SnapshotResponse:
        request = wpb.SnapshotRequest(
            worker_id=self.worker_id,
            session_id=self.session_id,
            lease_epoch=self.epoch,
            seq=seq,
            workspace=pb.WorkspaceManifest(chunk_digests=[sha(c) for c in chunks], file_count=files, total_bytes=size),
        )
        return await self.stub.Snapshot(iter([request]), timeout=10)

    async def resume(self) -> pb.WorkspaceManifest | None:
        request = wpb.ResumeRequest(worker_id=self.worker_id, session_id=self.session_id, lease_epoch=self.epoch)
        chunks = [c async for c in self.stub.Resume(request, timeout=10)]
        return chunks[0].workspace if chunks[0].HasField("workspace") else None

    async def run_turn(self, client: sdk.AsyncClient, text: str) -> str:
        turn = await client.send_input(self.session_id, text)
        offer = await self.take_offer()
        if (offer.session_id, offer.lease_epoch) != self.written:
            self.wseq = 0  # worker_seq numbers the events of one epoch of one session
        self.written = (offer.session_id, offer.lease_epoch)
        self.epoch = offer.lease_epoch
        n = self.wseq
        await self.write(
            self.session_id, self.epoch, [started(n + 1, turn.turn_id, self.worker_id), completed(n + 2, turn.turn_id)]
        )
        self.wseq = n + 2
        return turn.turn_id


async def _worker(cp: ControlPlane, client: sdk.AsyncClient) -> Worker:
    w = Worker(f"127.0.0.1:{cp.port}", "wkr_ws")
    await w.register()
    await w.open_lease()
    w.session_id = (await client.create_session("shell")).session_id
    return w


async def _checkpoint(w: Worker, client: sdk.AsyncClient, files: dict[str, bytes]) -> list[bytes]:
    """Upload `files` and a one-chunk manifest of them, then a snapshot at the log's end."""
    chunk = chunk_of(*(file_entry(p, d) for p, d in sorted(files.items())))
    await w.put({sha(d): d for d in files.values()} | {sha(chunk): chunk})
    last = (await client.get_session(w.session_id)).last_seq
    await w.snapshot(last, [chunk], len(files), sum(len(d) for d in files.values()))
    return [chunk]


async def test_blobs_go_in_checked_and_out_only_to_the_holder_of_a_checkpoint_that_names_them(control_plane, client):
    w = await _worker(control_plane, client)
    try:
        await w.run_turn(client, "one")
        big = bytes(range(256)) * 10_000  # 2.5 MB: several pieces each way
        assert await w.missing([sha(b"a"), sha(big)]) == [sha(b"a"), sha(big)]
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await w.put({sha(b"not this"): b"something else"})
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(bad.value)[0] == "INVALID_WORKSPACE"
        assert await w.missing([sha(b"not this")]) == [sha(b"not this")]  # nothing of it kept

        chunk = (await _checkpoint(w, client, {"a.txt": b"a", "big.bin": big}))[0]
        assert await w.missing([sha(b"a"), sha(big), sha(chunk)]) == []
        assert await w.get([sha(big), sha(chunk)]) == {sha(big): big, sha(chunk): chunk}
        manifest = await w.resume()
        assert manifest is not None and list(manifest.chunk_digests) == [sha(chunk)]
        assert (manifest.file_count, manifest.total_bytes) == (2, 1 + len(big))

        # A blob the owner holds but this session's checkpoint does not name is not served.
        other = await client.create_session("shell")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await w.get([sha(b"zzz")])
        assert _details(denied.value)[0] == "INVALID_WORKSPACE"
        # Nor is anything to a worker without the session's lease.
        with pytest.raises(grpc.aio.AioRpcError) as fenced:
            await w.get([sha(big)], session_id=other.session_id, epoch=1)
        assert _details(fenced.value)[0] == "LEASE_LOST"
    finally:
        await w.close()


@pytest.mark.parametrize(
    "entry, problem",
    [
        (pb.WorkspaceEntry(path="../escape", kind=FILE, mode=0o644, size=1, digest=sha(b"x")), "'..'"),
        (pb.WorkspaceEntry(path="/etc/passwd", kind=FILE, mode=0o644, size=1, digest=sha(b"x")), "absolute"),
        (pb.WorkspaceEntry(path="bin/sh", kind=FILE, mode=0o4755, size=1, digest=sha(b"x")), "setuid"),
        (pb.WorkspaceEntry(path="dev", kind=pb.WORKSPACE_ENTRY_KIND_UNSPECIFIED, mode=0o644), "kind"),
        (pb.WorkspaceEntry(path="gone", kind=FILE, mode=0o644, size=5, digest=sha(b"never")), "not stored"),
    ],
)
async def test_a_manifest_that_escapes_or_names_a_missing_blob_is_refused_and_changes_nothing(
    control_plane, client, entry, problem
):
    w = await _worker(control_plane, client)
    try:
        await w.run_turn(client, "one")
        kept = await _checkpoint(w, client, {"keep.txt": b"x"})
        chunk = chunk_of(entry)
        await w.put({sha(b"x"): b"x", sha(chunk): chunk})
        last = (await client.get_session(w.session_id)).last_seq
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await w.snapshot(last, [chunk], 1, entry.size)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _details(bad.value)[0] == "INVALID_WORKSPACE" and problem in bad.value.details()
        manifest = await w.resume()
        assert manifest is not None and list(manifest.chunk_digests) == [sha(kept[0])]
    finally:
        await w.close()


@pytest.fixture
async def limited(db_url: str) -> AsyncIterator[ControlPlane]:
    limits = Limits(max_workspace_files=2, max_blob_bytes_per_owner=64 * 1024)
    async with ControlPlane(
        Settings(port=0, db=db_url, timings=FAST, dev_owner="local", migrate=True, limits=limits)
    ) as cp:
        yield cp


async def test_limits_are_resource_exhausted_naming_the_limit_and_the_previous_checkpoint_stays(limited):
    async with sdk.AsyncClient(f"127.0.0.1:{limited.port}") as client:
        w = await _worker(limited, client)
        try:
            await w.run_turn(client, "one")
            kept = await _checkpoint(w, client, {"a": b"1", "b": b"2"})
            with pytest.raises(grpc.aio.AioRpcError) as many:
                await _checkpoint(w, client, {"a": b"1", "b": b"2", "c": b"3"})
            assert many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert _details(many.value)[0] == "WORKSPACE_LIMIT_EXCEEDED"
            assert "max_workspace_files" in many.value.details()
            manifest = await w.resume()
            assert manifest is not None and list(manifest.chunk_digests) == [sha(kept[0])]
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await w.put({sha(b"y" * 70_000): b"y" * 70_000})
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_blob_bytes_per_owner" in full.value.details()
        finally:
            await w.close()


async def test_a_fork_carries_its_turns_checkpoint_and_a_revert_brings_back_the_earlier_one(control_plane, client):
    w = await _worker(control_plane, client)
    try:
        t1 = await w.run_turn(client, "one")
        first = await _checkpoint(w, client, {"v": b"1"})
        await w.run_turn(client, "two")
        second = await _checkpoint(w, client, {"v": b"2"})
        assert list((await w.resume()).chunk_digests) == [sha(second[0])]

        fork = await client.fork_session(w.session_id, turn_id=t1)
        source = w.session_id
        w.session_id = fork.session_id
        await w.run_turn(client, "on the fork")  # the fork's first lease, at a new epoch
        manifest = await w.resume()
        assert manifest is not None and list(manifest.chunk_digests) == [sha(first[0])]
        assert await w.get([sha(b"1")]) == {sha(b"1"): b"1"}  # the same owner's blob, not copied

        w.session_id = source
        await client.revert_session(source, turn_id=t1)
        assert (await w.next("revoked")).revoked.session_id == source  # the warm runtime goes
        await w.run_turn(client, "after the revert")
        manifest = await w.resume()
        assert manifest is not None and list(manifest.chunk_digests) == [sha(first[0])]
    finally:
        await w.close()


async def test_purging_the_owner_deletes_its_blobs(control_plane, client):
    w = await _worker(control_plane, client)
    try:
        await w.run_turn(client, "one")
        await _checkpoint(w, client, {"a": b"secret"})
        assert await control_plane.workspaces.blobs.usage("local") > 0
        async for _ in client.purge_owner_data("local"):
            pass
        assert await control_plane.workspaces.blobs.usage("local") == 0
        assert await control_plane.workspaces.blobs.missing("local", [sha(b"secret")]) == [sha(b"secret")]
    finally:
        await w.close()


async def test_blobs_no_checkpoint_names_are_collected_after_their_grace(control_plane, client):
    w = await _worker(control_plane, client)
    other = Worker(f"127.0.0.1:{control_plane.port}", "wkr_ws2")
    await other.register()
    await other.open_lease()
    blobs = control_plane.workspaces.blobs
    try:
        await w.run_turn(client, "one")
        await _checkpoint(w, client, {"shared": b"both", "mine": b"only the first session's"})
        other.session_id = (await client.create_session("shell")).session_id
        await other.run_turn(client, "one")
        await _checkpoint(other, client, {"shared": b"both"})
        await w.put({sha(b"uploaded, never named"): b"uploaded, never named"})

        # Within the grace nothing goes, named or not: a checkpoint may be on its way.
        assert await control_plane.workspaces.collect_garbage("local", grace_s=3600) == (0, 0)
        assert await blobs.missing("local", [sha(b"uploaded, never named")]) == []
        # Past it, only what no checkpoint names.
        assert await control_plane.workspaces.collect_garbage("local", grace_s=0) == (1, len(b"uploaded, never named"))
        await client.delete_session(w.session_id)
        count, _ = await control_plane.workspaces.collect_garbage("local", grace_s=0)
        assert count == 2  # "mine" and the first session's manifest chunk; "shared" stays
        named = [sha(b"both"), sha(b"only the first session's")]
        assert await blobs.missing("local", named) == [sha(b"only the first session's")]
        assert await other.get([sha(b"both")]) == {sha(b"both"): b"both"}
    finally:
        await other.close()
        await w.close()
