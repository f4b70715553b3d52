"""Scanning a workspace into a checkpoint (`_workspace`): which paths it holds and how, the blobs
it stages, the stat cache that spares re-reading unchanged files (and the racily clean ones it
does re-read), and the content-defined manifest chunks."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from tether.execution_worker import _workspace
from tether.execution_worker._workspace import (
    DEFAULT_IGNORES,
    Checkpoint,
    WorkspaceError,
    WorkspaceScanner,
    is_chunk_boundary,
    manifest_chunks,
)
from tether.v1 import resources_pb2 as pb

FILE = pb.WORKSPACE_ENTRY_KIND_FILE
DIRECTORY = pb.WORKSPACE_ENTRY_KIND_DIRECTORY
SYMLINK = pb.WORKSPACE_ENTRY_KIND_SYMLINK
HOUR_NS = 3600 * 10**9


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(root: Path, files: dict[str, bytes | str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def age(root: Path) -> None:
    """Date every file an hour back, so a scan's stat cache trusts it (not racily clean)."""
    old = time.time_ns() - HOUR_NS
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):
                os.utime(path, ns=(old, old))


def paths(checkpoint: Checkpoint) -> list[str]:
    return [e.path for e in checkpoint.entries]


def chunk_entries(checkpoint: Checkpoint) -> list[pb.WorkspaceEntry]:
    """The entries read back from the staged chunk blobs, checking each blob's name."""
    entries: list[pb.WorkspaceEntry] = []
    for digest in checkpoint.manifest.chunk_digests:
        blob = checkpoint.blob_path(digest).read_bytes()
        assert sha(blob) == digest
        entries.extend(pb.WorkspaceManifestChunk.FromString(blob).entries)
    return entries


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "ws").mkdir()
    return tmp_path / "ws"


@pytest.fixture
def scanner(root: Path, tmp_path: Path) -> WorkspaceScanner:
    return WorkspaceScanner(root, stage_dir=tmp_path / "stage")


def test_files_directories_and_symlinks_are_listed_sorted_and_links_are_never_followed(
    root: Path, scanner: WorkspaceScanner, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    write(outside, {"secret.txt": "outside the workspace"})
    write(root, {"a.txt": "alpha", "a/b.txt": "bee", "a/c/d.bin": b"\x00\x01" * 1000, "z": ""})
    (root / "empty").mkdir()
    os.symlink("a.txt", root / "link-to-file")
    os.symlink(str(outside), root / "a" / "out")  # a directory outside the workspace
    os.symlink("nowhere", root / "dangling")
    os.chmod(root / "a.txt", 0o600)
    os.chmod(root / "a" / "c", 0o750)

    checkpoint = scanner.scan()

    assert [(e.path, e.kind, e.mode, e.size, e.digest, e.link_target) for e in checkpoint.entries] == [
        ("a", DIRECTORY, 0o755, 0, "", ""),
        ("a.txt", FILE, 0o600, 5, sha(b"alpha"), ""),  # "a.txt" < "a/...": '.' sorts before '/'
        ("a/b.txt", FILE, 0o644, 3, sha(b"bee"), ""),
        ("a/c", DIRECTORY, 0o750, 0, "", ""),
        ("a/c/d.bin", FILE, 0o644, 2000, sha(b"\x00\x01" * 1000), ""),
        ("a/out", SYMLINK, 0, 0, "", str(outside)),
        ("dangling", SYMLINK, 0, 0, "", "nowhere"),
        ("empty", DIRECTORY, 0o755, 0, "", ""),
        ("link-to-file", SYMLINK, 0, 0, "", "a.txt"),
        ("z", FILE, 0o644, 0, sha(b""), ""),
    ]
    assert checkpoint.manifest.file_count == 7
    assert checkpoint.manifest.total_bytes == 5 + 3 + 2000
    assert chunk_entries(checkpoint) == checkpoint.entries
    for entry in checkpoint.entries:
        if entry.kind == FILE:
            assert checkpoint.blob_path(entry.digest).read_bytes() == (root / entry.path).read_bytes()
    assert checkpoint.files_scanned == 4 and checkpoint.files_hashed == 4 and checkpoint.bytes_hashed == 2008
    assert not any("secret" in e.path for e in checkpoint.entries)


def test_an_empty_workspace_has_no_chunks(root: Path, scanner: WorkspaceScanner) -> None:
    checkpoint = scanner.scan()
    assert checkpoint.manifest == pb.WorkspaceManifest() and checkpoint.entries == []
    assert checkpoint.new_digests == [] and scanner.scan().new_digests == []


def test_paths_are_sorted_by_their_utf8_bytes(root: Path, scanner: WorkspaceScanner) -> None:
    write(root, {"é": "1", "z": "2", "Z": "3", "a-b": "4", "a/b": "5", "a.b": "6", "日本": "7"})
    found = paths(scanner.scan())
    assert found == sorted(found, key=lambda p: p.encode())
    assert found.index("a-b") < found.index("a.b") < found.index("a/b")


def test_modes_keep_only_the_permission_bits(root: Path, scanner: WorkspaceScanner) -> None:
    write(root, {"setuid": "x", "setgid": "x", "sticky/f": "x"})
    os.chmod(root / "setuid", 0o4755)
    os.chmod(root / "setgid", 0o2750)
    os.chmod(root / "sticky", 0o1777)
    modes = {e.path: e.mode for e in scanner.scan().entries}
    assert modes == {"setgid": 0o750, "setuid": 0o755, "sticky": 0o777, "sticky/f": 0o644}


def test_default_ignores_skip_dependency_folders_anywhere_but_git_is_captured(
    root: Path, scanner: WorkspaceScanner
) -> None:
    write(
        root,
        {
            "node_modules/x/index.js": "x",
            "web/node_modules/y.js": "y",
            ".venv/bin/python": "p",
            "pkg/__pycache__/m.pyc": "c",
            "pkg/m.py": "m",
            ".git/HEAD": "ref: refs/heads/main\n",
            ".git/objects/ab/cdef": "blob",
            "node_modules.txt": "a file, not the folder",
        },
    )
    assert paths(scanner.scan()) == [
        ".git",
        ".git/HEAD",
        ".git/objects",
        ".git/objects/ab",
        ".git/objects/ab/cdef",
        "node_modules.txt",
        "pkg",
        "pkg/m.py",
        "web",
    ]
    assert DEFAULT_IGNORES == ("node_modules/", ".venv/", "__pycache__/")


def test_the_default_ignores_can_be_replaced(root: Path, tmp_path: Path) -> None:
    write(root, {"node_modules/x.js": "x", "dist/out.js": "o"})
    scanner = WorkspaceScanner(root, ignores=("dist/",), stage_dir=tmp_path / "stage")
    assert paths(scanner.scan()) == ["node_modules", "node_modules/x.js"]


def test_tetherignore_patterns_with_negation_are_read_on_every_scan(root: Path, scanner: WorkspaceScanner) -> None:
    write(
        root,
        {
            ".tetherignore": "# build output\n*.log\n!keep.log\n/build/\nsecrets/\n!.venv/\n",
            "a.log": "1",
            "keep.log": "2",
            "sub/b.log": "3",
            "sub/keep.log": "4",
            "build/out": "5",
            "sub/build/src.c": "6",  # `/build/` is anchored at the top
            "secrets/key": "7",
            ".venv/lib.py": "8",  # a default ignore that the file re-includes
        },
    )
    assert paths(scanner.scan()) == [
        ".tetherignore",
        ".venv",
        ".venv/lib.py",
        "keep.log",
        "sub",
        "sub/build",
        "sub/build/src.c",
        "sub/keep.log",
    ]
    (root / ".tetherignore").write_text("sub/\n")
    assert paths(scanner.scan()) == [
        ".tetherignore",
        "a.log",
        "build",
        "build/out",
        "keep.log",
        "secrets",
        "secrets/key",
    ]
    (root / ".tetherignore").unlink()
    assert "sub/b.log" in paths(scanner.scan())


def test_a_tetherignore_symlink_is_not_followed(root: Path, scanner: WorkspaceScanner, tmp_path: Path) -> None:
    (tmp_path / "patterns").write_text("*\n")
    os.symlink(tmp_path / "patterns", root / ".tetherignore")
    write(root, {"kept.txt": "k"})
    assert paths(scanner.scan()) == [".tetherignore", "kept.txt"]


def test_the_top_level_tether_directory_is_never_captured(root: Path, scanner: WorkspaceScanner) -> None:
    write(
        root, {".tether/state.json": "{}", "sub/.tether/x": "nested ones are ordinary", ".tetherignore": "!.tether/\n"}
    )
    assert paths(scanner.scan()) == [".tetherignore", "sub", "sub/.tether", "sub/.tether/x"]


def test_sockets_and_fifos_are_skipped(root: Path, scanner: WorkspaceScanner) -> None:
    write(root, {"f": "x"})
    os.mkfifo(root / "pipe")
    assert paths(scanner.scan()) == ["f"]


def test_names_a_checkpoint_cannot_hold_are_refused_unless_ignored(root: Path, scanner: WorkspaceScanner) -> None:
    bad = os.path.join(os.fsencode(root), b"caf\xe9")  # Latin-1, not UTF-8
    with open(bad, "wb") as f:
        f.write(b"x")
    with pytest.raises(WorkspaceError, match="not valid UTF-8; rename it or add it to .tetherignore"):
        scanner.scan()
    (root / ".tetherignore").write_text("caf*\n")
    assert paths(scanner.scan()) == [".tetherignore"]
    write(root, {"back\\slash": "x"})
    with pytest.raises(WorkspaceError, match="backslash"):
        scanner.scan()


def test_the_stage_dir_must_be_outside_the_workspace(root: Path) -> None:
    with pytest.raises(ValueError, match="outside the workspace"):
        WorkspaceScanner(root, stage_dir=root / "stage")
    WorkspaceScanner(root, stage_dir=root / ".tether" / "stage")  # the always-ignored folder is fine


def test_a_staged_blob_keeps_the_bytes_that_were_hashed(root: Path, scanner: WorkspaceScanner) -> None:
    write(root, {"f": "first version"})
    checkpoint = scanner.scan()
    (digest,) = [e.digest for e in checkpoint.entries]
    (root / "f").write_text("edited after the scan")
    assert checkpoint.blob_path(digest).read_text() == "first version"
    with pytest.raises(ValueError):
        checkpoint.blob_path("../escape")


def test_large_files_are_streamed_and_staged_whole(root: Path, scanner: WorkspaceScanner) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    write(root, {"big": data})
    checkpoint = scanner.scan()
    assert checkpoint.entries[0].digest == sha(data)
    assert checkpoint.blob_path(sha(data)).read_bytes() == data
    assert [p.name for p in checkpoint.stage_dir.iterdir() if p.name.startswith(".tmp-")] == []


def test_a_rescan_of_an_unchanged_tree_reads_nothing(root: Path, scanner: WorkspaceScanner) -> None:
    write(root, {f"d{i}/f{j}": f"{i}-{j}" for i in range(5) for j in range(20)})
    age(root)
    first = scanner.scan()
    assert first.files_hashed == 100
    assert set(first.new_digests) == {e.digest for e in first.entries if e.kind == FILE} | set(
        first.manifest.chunk_digests
    )
    second = scanner.scan()
    assert (second.files_scanned, second.files_hashed, second.bytes_hashed) == (100, 0, 0)
    assert second.new_digests == []
    assert second.manifest == first.manifest and second.entries == first.entries


def test_an_edited_file_is_the_only_one_read_and_its_blob_and_chunk_are_the_new_ones(
    root: Path, scanner: WorkspaceScanner
) -> None:
    write(root, {f"src/m{i:03}.py": f"print({i})\n" for i in range(300)})
    age(root)
    before = scanner.scan()
    (root / "src" / "m123.py").write_text("print('edited')\n")
    after = scanner.scan()
    edited = sha(b"print('edited')\n")
    changed_chunks = [d for d in after.manifest.chunk_digests if d not in set(before.manifest.chunk_digests)]
    assert after.files_hashed == 1 and after.bytes_hashed == len("print('edited')\n")
    assert len(changed_chunks) == 1
    assert after.new_digests == [edited, *changed_chunks]
    assert all(after.blob_path(d).exists() for d in after.new_digests)
    # Touched with the same content: read again, but nothing is new.
    (root / "src" / "m124.py").write_text("print(124)\n")
    again = scanner.scan()
    assert again.files_hashed >= 1 and again.new_digests == []


def test_a_racily_clean_file_is_read_again_until_a_later_scan_vouches_for_it(
    root: Path, scanner: WorkspaceScanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(root, {"old": "old", "fresh": "fresh"})
    age(root)
    (root / "fresh").write_text("fresh")  # modified just now: as the scan that caches it
    assert scanner.scan().files_hashed == 2
    # Unchanged stat, but modified within the slack of the scan that cached it: read again.
    assert scanner.scan().files_hashed == 1
    # A scan starting well after the modification vouches for it; later scans trust the stat.
    later = time.time_ns() + 10 * 10**9
    monkeypatch.setattr(_workspace.time, "time_ns", lambda: later)
    assert scanner.scan().files_hashed == 1
    monkeypatch.undo()
    assert scanner.scan().files_hashed == 0


def test_a_racy_edit_that_leaves_the_stat_unchanged_is_still_caught(root: Path, scanner: WorkspaceScanner) -> None:
    """On a file system with coarse timestamps, a write in the same tick as the scan that cached
    the file leaves size, mtime and ctime as they were. Here the cache is made to hold the new
    stat (what such a file system would show); the racy rule is what reads the file again."""
    write(root, {"f": "aaaa"})
    scanner.scan()
    (root / "f").write_text("bbbb")
    st = os.lstat(root / "f")
    cached = scanner._cache["f"]
    scanner._cache["f"] = cached._replace(mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino)
    assert scanner.scan().entries[0].digest == sha(b"bbbb")
    # The same situation long after the caching scan would (rightly) be trusted.
    scanner._cache["f"] = cached._replace(
        mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns, ino=st.st_ino, cached_at_ns=st.st_mtime_ns + 10 * 10**9
    )
    assert scanner.scan().entries[0].digest == sha(b"aaaa")


def test_a_file_changing_while_it_is_read_is_read_again(
    root: Path, scanner: WorkspaceScanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(root, {"f": "before"})
    real_fstat = os.fstat
    calls = {"n": 0}

    def fstat_appending_once(fd: int) -> os.stat_result:
        calls["n"] += 1
        if calls["n"] == 2:  # the first read is done: the file grows before the check
            with open(root / "f", "a") as f:
                f.write(" and after")
        return real_fstat(fd)

    monkeypatch.setattr(_workspace.os, "fstat", fstat_appending_once)
    checkpoint = scanner.scan()
    assert checkpoint.entries[0].digest == sha(b"before and after")
    assert checkpoint.blob_path(sha(b"before and after")).read_text() == "before and after"
    assert not checkpoint.blob_path(sha(b"before")).exists()


def test_a_file_that_never_stops_changing_fails_the_scan(
    root: Path, scanner: WorkspaceScanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(root, {"busy.log": "x"})
    real_fstat = os.fstat

    def fstat_growing(fd: int) -> os.stat_result:
        with open(root / "busy.log", "a") as f:
            f.write("x")
        return real_fstat(fd)

    monkeypatch.setattr(_workspace.os, "fstat", fstat_growing)
    with pytest.raises(WorkspaceError, match="busy.log kept changing while it was read"):
        scanner.scan()
    assert [p for p in scanner.stage_dir.iterdir() if p.name.startswith(".tmp-")] == []


def test_forget_makes_the_next_scan_read_and_stage_everything(root: Path, scanner: WorkspaceScanner) -> None:
    write(root, {"a": "1", "b": "2"})
    age(root)
    first = scanner.scan()
    scanner.staged_cleanup(keep=set())
    assert list(scanner.stage_dir.iterdir()) == []
    scanner.forget()
    again = scanner.scan()
    assert again.files_hashed == 2
    assert sorted(again.new_digests) == sorted(first.new_digests)
    assert all(again.blob_path(d).exists() for d in again.new_digests)


def test_staged_cleanup_keeps_only_what_it_is_told(root: Path, scanner: WorkspaceScanner) -> None:
    write(root, {"a": "1", "b": "2"})
    checkpoint = scanner.scan()
    keep = {sha(b"1")}
    scanner.staged_cleanup(keep)
    assert {p.name for p in checkpoint.stage_dir.iterdir()} == keep


def _entries(names: list[str]) -> list[pb.WorkspaceEntry]:
    return [pb.WorkspaceEntry(path=n, kind=FILE, mode=0o644, size=1, digest=sha(n.encode())) for n in sorted(names)]


def test_chunks_are_cut_by_path_and_survive_an_insertion_or_a_removal() -> None:
    names = [f"pkg{i // 50:03}/mod{i:05}.py" for i in range(3000)]
    entries = _entries(names)
    chunks = manifest_chunks(entries)
    assert 20 < len(chunks) < 100  # about one cut in 64
    entries_back = [e for _, blob in chunks for e in pb.WorkspaceManifestChunk.FromString(blob).entries]
    assert entries_back == entries
    old = {digest for digest, _ in chunks}
    for extra in ["aaa", "pkg010/mod00512.pyc", "pkg030/new.py", "zzz", *[f"pkg{i:03}/x{i}" for i in range(0, 60, 7)]]:
        changed = [d for d, _ in manifest_chunks(_entries([*names, extra])) if d not in old]
        assert 1 <= len(changed) <= 2, extra
    for gone in range(0, 3000, 311):
        changed = [d for d, _ in manifest_chunks(_entries(names[:gone] + names[gone + 1 :])) if d not in old]
        assert len(changed) <= 2, gone


def test_a_chunk_without_a_cut_stops_at_512_entries() -> None:
    names = [n for n in (f"f{i:06}" for i in range(20000)) if not is_chunk_boundary(n)][:1200]
    chunks = manifest_chunks(_entries(names))
    sizes = [len(pb.WorkspaceManifestChunk.FromString(blob).entries) for _, blob in chunks]
    assert sizes == [512, 512, 176]


def test_ten_thousand_files_one_change_reads_one_file_and_stores_at_most_two_chunks(
    root: Path, scanner: WorkspaceScanner
) -> None:
    for d in range(100):
        (root / f"pkg{d:03}").mkdir()
        for f in range(100):
            (root / f"pkg{d:03}" / f"module_{f:03}.py").write_text(f"# {d}/{f}\n")
    age(root)
    first = scanner.scan()
    assert first.files_scanned == 10_000 and first.manifest.file_count == 10_000
    (root / "pkg042" / "module_042.py").write_text("# changed\n")
    second = scanner.scan()
    assert second.files_hashed == 1
    assert second.new_digests[0] == sha(b"# changed\n")
    assert 1 <= len(second.new_digests[1:]) <= 2
    assert set(second.new_digests[1:]) <= set(second.manifest.chunk_digests)
    (root / "pkg077" / "inserted.py").write_text("# new\n")
    third = scanner.scan()
    new_chunks = [d for d in third.manifest.chunk_digests if d not in set(second.manifest.chunk_digests)]
    assert third.files_hashed == 2  # the new file, and the one edited just before the last scan
    assert 1 <= len(new_chunks) <= 2
    assert third.new_digests == [sha(b"# new\n"), *new_chunks]
    assert chunk_entries(third) == third.entries


def test_a_full_stage_disk_fails_the_scan_and_the_next_scan_stages_everything_again(
    root: Path, scanner: WorkspaceScanner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(root, {"a": "1", "b": "2"})
    age(root)
    real_write_blob = _workspace._write_blob

    def no_space(stage_dir: Path, digest: str, blob: bytes) -> None:
        raise _workspace._staging_error("a manifest chunk", OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(_workspace, "_write_blob", no_space)
    with pytest.raises(WorkspaceError, match="^workspace checkpoint failed: no space left on device"):
        scanner.scan()
    monkeypatch.setattr(_workspace, "_write_blob", real_write_blob)
    checkpoint = scanner.scan()
    assert len(checkpoint.new_digests) == 3  # two files and the one chunk, none forgotten
    assert all(checkpoint.blob_path(d).exists() for d in checkpoint.new_digests)
