"""Restoring a workspace checkpoint (`_workspace_restore`): a round trip gives the same tree,
what is already right stays untouched, stale paths go but ignored ones stay, and hand-crafted
manifests, hostile symlinks on disk, bad or missing blobs and a full disk are refused without
writing outside the workspace or leaving a half-written file."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tether.execution_worker._workspace import WorkspaceError, WorkspaceScanner
from tether.execution_worker._workspace_restore import RestoreStats, restore, validate_entries
from tether.v1 import resources_pb2 as pb

FILE = pb.WORKSPACE_ENTRY_KIND_FILE
DIRECTORY = pb.WORKSPACE_ENTRY_KIND_DIRECTORY
SYMLINK = pb.WORKSPACE_ENTRY_KIND_SYMLINK


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)


def tree(root: Path) -> dict[str, str]:
    """Every path under `root` (links not followed): file contents, link targets, '<dir>'."""
    found: dict[str, str] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                found[rel] = "-> " + os.readlink(path)
            elif os.path.isdir(path):
                found[rel] = "<dir>"
            else:
                found[rel] = Path(path).read_bytes().decode(errors="replace")
    return found


class Blobs:
    """A fetch that serves blobs from a dict, writing each to a temp name in the stage dir (as a
    download would), and records what it was asked for."""

    def __init__(self, stage_dir: Path, blobs: dict[str, bytes]) -> None:
        self.stage_dir = stage_dir
        self.blobs = blobs
        self.asked: list[list[str]] = []

    def __call__(self, digests: list[str]) -> Iterator[tuple[str, Path]]:
        self.asked.append(list(digests))
        for digest in digests:
            if digest in self.blobs:
                path = self.stage_dir / f".download-{digest[:12]}"
                path.write_bytes(self.blobs[digest])
                yield digest, path


def blobs_of(checkpoint_stage: Path, entries: Sequence[pb.WorkspaceEntry]) -> dict[str, bytes]:
    return {e.digest: (checkpoint_stage / e.digest).read_bytes() for e in entries if e.kind == FILE}


def entry(
    path: str, kind: int = FILE, *, mode: int = 0o644, content: bytes = b"", target: str = ""
) -> pb.WorkspaceEntry:
    if kind == FILE:
        return pb.WorkspaceEntry(path=path, kind=FILE, mode=mode, size=len(content), digest=sha(content))
    if kind == SYMLINK:
        return pb.WorkspaceEntry(path=path, kind=SYMLINK, link_target=target)
    return pb.WorkspaceEntry(path=path, kind=kind, mode=mode)  # type: ignore[arg-type]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """Workspace A: files, nested and empty directories, modes, symlinks (one leading outside)."""
    a = tmp_path / "a"
    write(
        a,
        {
            "README.md": "# project\n",
            "src/app.py": "print('hi')\n",
            "src/pkg/__init__.py": "",
            "src/pkg/data.bin": os.urandom(3 * (1 << 20) + 7),
            "src/copy.py": "print('hi')\n",  # same content as app.py: one blob
            "bin/run": "#!/bin/sh\necho run\n",
            "locked/inside.txt": "in a read-only directory",
            ".tetherignore": "*.log\nscratch/\n",
            ".git/HEAD": "ref: refs/heads/main\n",
        },
    )
    (a / "empty").mkdir()
    os.chmod(a / "bin" / "run", 0o755)
    os.chmod(a / "README.md", 0o600)
    os.symlink("src/app.py", a / "app")
    os.symlink(str(tmp_path / "elsewhere"), a / "out")
    os.chmod(a / "locked", 0o555)
    return a


@pytest.fixture
def checkpoint(source: Path, tmp_path: Path):
    return WorkspaceScanner(source, stage_dir=tmp_path / "stage-a").scan()


def test_a_round_trip_into_an_empty_directory_gives_the_same_checkpoint(checkpoint, tmp_path: Path) -> None:
    b, stage_b = tmp_path / "b", tmp_path / "stage-b"
    stage_b.mkdir()
    fetch = Blobs(stage_b, blobs_of(checkpoint.stage_dir, checkpoint.entries))
    stats = restore(b, checkpoint.entries, fetch, stage_dir=stage_b)
    assert WorkspaceScanner(b, stage_dir=tmp_path / "stage-b2").scan().entries == checkpoint.entries
    file_blobs = {e.digest: e.size for e in checkpoint.entries if e.kind == FILE}
    assert stats == RestoreStats(
        file_count=checkpoint.manifest.file_count,
        total_bytes=checkpoint.manifest.total_bytes,
        files_written=checkpoint.manifest.file_count,
        bytes_downloaded=sum(file_blobs.values()),
        files_removed=0,
    )
    assert len(fetch.asked) == 1 and sorted(fetch.asked[0]) == sorted(file_blobs)
    assert stat.S_IMODE(os.lstat(b / "locked").st_mode) == 0o555
    assert os.readlink(b / "out") == str(tmp_path / "elsewhere")
    assert not [name for name in tree(b) if ".tether-tmp-" in name]


def test_a_restore_primes_the_scanner_so_nothing_is_read_again(checkpoint, tmp_path: Path) -> None:
    b, stage_b = tmp_path / "b", tmp_path / "stage-b"
    stage_b.mkdir()
    scanner = WorkspaceScanner(b, stage_dir=stage_b)
    restore(
        b,
        checkpoint.entries,
        Blobs(stage_b, blobs_of(checkpoint.stage_dir, checkpoint.entries)),
        stage_dir=stage_b,
        scanner=scanner,
    )
    after = scanner.scan()
    assert after.entries == checkpoint.entries
    assert (after.files_hashed, after.new_digests) == (0, [])
    # The runtime then edits a file without changing its size: the next scan sees it.
    (b / "src" / "app.py").write_text("print('ho')\n")
    edited = scanner.scan()
    assert edited.files_hashed == 1 and edited.new_digests[0] == sha(b"print('ho')\n")


def test_files_already_right_are_kept_untouched_and_only_the_rest_is_fetched(checkpoint, tmp_path: Path) -> None:
    b, stage_b = tmp_path / "b", tmp_path / "stage-b"
    stage_b.mkdir()
    blobs = blobs_of(checkpoint.stage_dir, checkpoint.entries)
    scanner = WorkspaceScanner(b, stage_dir=stage_b)
    restore(b, checkpoint.entries, Blobs(stage_b, blobs), stage_dir=stage_b, scanner=scanner)
    scanner.staged_cleanup(keep=set())  # nothing staged: what is missing must be fetched
    (b / "src" / "app.py").write_text("edited locally\n")
    (b / "bin" / "run").unlink()
    os.chmod(b / "src" / "pkg" / "__init__.py", 0o600)  # right content, wrong mode
    before = {
        p: (os.lstat(b / p).st_ino, os.lstat(b / p).st_mtime_ns)
        for p in ("README.md", "src/copy.py", "src/pkg/data.bin", "app")
    }

    fetch = Blobs(stage_b, blobs)
    stats = restore(b, checkpoint.entries, fetch, stage_dir=stage_b, scanner=scanner)

    assert (
        stats.files_written == 3
        and stats.files_removed == 0
        and stats.bytes_downloaded == len(blobs[sha(b"#!/bin/sh\necho run\n")])
    )
    # app.py's content is also src/copy.py's, kept on disk: copied from there, not fetched.
    assert fetch.asked == [[sha(b"#!/bin/sh\necho run\n")]]
    assert {p: (os.lstat(b / p).st_ino, os.lstat(b / p).st_mtime_ns) for p in before} == before
    assert WorkspaceScanner(b, stage_dir=tmp_path / "stage-b2").scan().entries == checkpoint.entries


def test_stale_paths_go_and_ignored_ones_stay(checkpoint, tmp_path: Path) -> None:
    b, stage_b = tmp_path / "b", tmp_path / "stage-b"
    victim = tmp_path / "victim"
    write(victim, {"precious.txt": "must survive"})
    write(
        b,
        {
            "stale.txt": "gone",
            "src/old.py": "gone",
            "olddir/sub/x": "gone",
            "olddir/node_modules/dep.js": "ignored: stays, and so does olddir",
            "node_modules/lib/index.js": "ignored",
            "debug.log": "ignored by the checkpoint's .tetherignore",
            "scratch/notes": "ignored by the checkpoint's .tetherignore",
            ".tether/worker_id": "the worker's own",
            ".tetherignore": "private/\n",  # the old rules do not protect anything
            "private/key": "gone",
            "README.md": "wrong content",
            "empty": "a file where the checkpoint has a directory",
        },
    )
    os.symlink(str(victim), b / "stale-link")  # removed as a link; what it points to stays
    (b / "src" / "pkg").mkdir()
    os.symlink(str(victim), b / "src" / "pkg" / "linkdir")
    os.mkdir(b / "app")  # a directory where the checkpoint has a symlink
    write(b, {"app/inner": "gone"})
    stage_b.mkdir()

    stats = restore(
        b, checkpoint.entries, Blobs(stage_b, blobs_of(checkpoint.stage_dir, checkpoint.entries)), stage_dir=stage_b
    )

    on_disk = tree(b)
    for kept in [
        "olddir/node_modules/dep.js",
        "node_modules/lib/index.js",
        "debug.log",
        "scratch/notes",
        ".tether/worker_id",
    ]:
        assert kept in on_disk, kept
    for gone in ["stale.txt", "src/old.py", "olddir/sub", "private", "stale-link", "src/pkg/linkdir", "app/inner"]:
        assert gone not in on_disk, gone
    assert on_disk["README.md"] == "# project\n" and on_disk["empty"] == "<dir>" and on_disk["app"] == "-> src/app.py"
    assert tree(victim) == {"precious.txt": "must survive"}
    # stale.txt, src/old.py, olddir/sub/x, olddir/sub, private/key, private, stale-link, src/pkg/linkdir,
    # app/inner, app, and the file at `empty`
    assert stats.files_removed == 11
    scanned = WorkspaceScanner(b, stage_dir=tmp_path / "stage-b2").scan()
    assert [e for e in scanned.entries if e.path != "olddir"] == list(checkpoint.entries)


@pytest.mark.parametrize("ignored", [False, True])
def test_a_symlink_on_disk_where_the_checkpoint_has_a_directory_is_replaced_not_written_through(
    ignored: bool, tmp_path: Path
) -> None:
    """Whether removal takes the link away as stale or leaves it because the checkpoint's
    .tetherignore covers its name, the directory is made real before anything is written."""
    root, sentinel, stage = tmp_path / "ws", tmp_path / "sentinel", tmp_path / "stage"
    write(sentinel, {"target.txt": "original"})
    root.mkdir()
    stage.mkdir()
    os.symlink(str(sentinel), root / "dir")
    os.symlink(str(sentinel / "target.txt"), root / "file")
    contents = {
        ".tetherignore": b"dir\nfile\n" if ignored else b"",
        "dir/pwn": b"pwned",
        "dir/target.txt": b"overwritten?",
        "file": b"not through the link",
    }
    entries = [
        entry(".tetherignore", content=contents[".tetherignore"]),
        entry("dir", DIRECTORY, mode=0o755),
        entry("dir/pwn", content=contents["dir/pwn"]),
        entry("dir/target.txt", content=contents["dir/target.txt"]),
        entry("file", content=contents["file"]),
    ]
    restore(root, entries, Blobs(stage, {sha(c): c for c in contents.values()}), stage_dir=stage)
    assert tree(sentinel) == {"target.txt": "original"}
    assert not os.path.islink(root / "dir") and (root / "dir" / "pwn").read_text() == "pwned"
    assert not os.path.islink(root / "file") and (root / "file").read_text() == "not through the link"


ESCAPES = {
    "parent": [entry("../x", content=b"pwn")],
    "absolute": [entry("/SENTINEL/pwn", content=b"pwn")],
    "dot-dot inside": [entry("a", DIRECTORY, mode=0o755), entry("a/../../x", content=b"pwn")],
    "through a symlink entry": [entry("link", SYMLINK, target="/SENTINEL"), entry("link/pwn", content=b"pwn")],
    "setuid mode": [entry("run", mode=0o4755, content=b"pwn")],
    "no kind": [pb.WorkspaceEntry(path="x", mode=0o644, size=3, digest=sha(b"pwn"))],
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_hand_crafted_escapes_are_refused_and_nothing_is_written(name: str, tmp_path: Path) -> None:
    root, sentinel, stage = tmp_path / "ws", tmp_path / "sentinel", tmp_path / "stage"
    write(sentinel, {"keep": "x"})
    stage.mkdir()
    entries = []
    for e in ESCAPES[name]:
        copy = pb.WorkspaceEntry()
        copy.CopyFrom(e)
        copy.path = copy.path.replace("/SENTINEL", str(sentinel))
        copy.link_target = copy.link_target.replace("/SENTINEL", str(sentinel))
        entries.append(copy)
    fetch = Blobs(stage, {sha(b"pwn"): b"pwn"})
    with pytest.raises(WorkspaceError, match="invalid workspace checkpoint"):
        restore(root, entries, fetch, stage_dir=stage)
    assert fetch.asked == []
    assert tree(sentinel) == {"keep": "x"}
    assert sorted(os.listdir(tmp_path)) == ["sentinel", "stage"]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([entry("")], "empty path"),
        ([entry("a\\b")], "backslash"),
        ([entry("a\x00b")], "NUL"),
        ([entry("a/")], "empty, '.' or '..'"),
        ([entry("./a")], "empty, '.' or '..'"),
        ([entry("a//b")], "empty, '.' or '..'"),
        ([entry("a"), entry("a")], "appears twice"),
        ([entry("b"), entry("a")], "unsorted"),
        ([entry("é"), entry("z")], "unsorted"),  # UTF-8 byte order: 'z' (0x7a) < 'é' (0xc3 0xa9)
        ([entry("a/b")], "parent of 'a/b' is not a directory entry"),
        ([entry("a"), entry("a/b")], "parent of 'a/b' is not a directory entry"),
        ([pb.WorkspaceEntry(path="f", kind=FILE, digest="ABC")], "no SHA-256 digest"),
        ([pb.WorkspaceEntry(path="f", kind=FILE, digest=sha(b"").upper())], "no SHA-256 digest"),
        ([entry("d", DIRECTORY, mode=0o1777)], "mode 0o1777"),
        ([pb.WorkspaceEntry(path="l", kind=SYMLINK)], "empty or NUL target"),
        ([pb.WorkspaceEntry(path="x", kind=7)], "no valid kind"),  # type: ignore[arg-type]
        ([entry(".tether", DIRECTORY), entry(".tether/worker_id")], "worker's .tether/"),
    ],
)
def test_malformed_entries_are_refused(entries: list[pb.WorkspaceEntry], message: str) -> None:
    with pytest.raises(WorkspaceError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate_entries(entries)


def test_a_blob_that_does_not_match_its_digest_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    root, stage = tmp_path / "ws", tmp_path / "stage"
    write(root, {"f": "old content"})
    stage.mkdir()
    entries = [entry("f", content=b"the real content"), entry("g", content=b"other")]
    fetch = Blobs(stage, {sha(b"the real content"): b"something else", sha(b"other"): b"other"})
    with pytest.raises(
        WorkspaceError,
        match=rf"downloaded blob .*\.download-.* has SHA-256 {sha(b'something else')}, expected {sha(b'the real content')}",
    ):
        restore(root, entries, fetch, stage_dir=stage)
    assert tree(root) == {"f": "old content"}
    assert not (stage / sha(b"the real content")).exists()


def test_a_blob_that_never_arrives_is_named(tmp_path: Path) -> None:
    root, stage = tmp_path / "ws", tmp_path / "stage"
    stage.mkdir()
    entries = [entry("a", content=b"here"), entry("b", content=b"lost")]
    with pytest.raises(WorkspaceError, match=f"blob {sha(b'lost')} missing"):
        restore(root, entries, Blobs(stage, {sha(b"here"): b"here"}), stage_dir=stage)
    assert tree(root) == {}


def test_a_damaged_staged_blob_is_fetched_again(tmp_path: Path) -> None:
    root, stage = tmp_path / "ws", tmp_path / "stage"
    stage.mkdir()
    (stage / sha(b"good")).write_bytes(b"bad!")
    fetch = Blobs(stage, {sha(b"good"): b"good"})
    restore(root, [entry("f", content=b"good")], fetch, stage_dir=stage)
    assert fetch.asked == [[sha(b"good")]] and (root / "f").read_text() == "good"


def test_a_full_disk_fails_the_restore_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, stage = tmp_path / "ws", tmp_path / "stage"
    write(root, {"f": "previous"})
    stage.mkdir()
    # Two files of one blob: the first is a copy (the last use is moved into place).
    entries = [entry("f", content=b"x" * 5000), entry("g", content=b"x" * 5000)]
    (stage / sha(b"x" * 5000)).write_bytes(b"x" * 5000)
    real_write = os.write

    def write_to_a_full_disk(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data)[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write_to_a_full_disk)
    with pytest.raises(WorkspaceError, match="^workspace restore failed: no space left on device"):
        restore(root, entries, Blobs(stage, {}), stage_dir=stage)
    monkeypatch.undo()
    assert tree(root) == {"f": "previous"}


def test_the_stage_dir_may_not_be_inside_the_workspace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="outside the workspace"):
        restore(tmp_path / "ws", [], Blobs(tmp_path, {}), stage_dir=tmp_path / "ws" / "stage")


def test_restoring_an_empty_checkpoint_empties_the_workspace_but_its_ignored_paths(tmp_path: Path) -> None:
    root, stage = tmp_path / "ws", tmp_path / "stage"
    write(root, {"a/b/c": "x", "node_modules/d": "y", ".tether/e": "z"})
    os.chmod(root / "a" / "b", 0o500)
    scanner = WorkspaceScanner(root, stage_dir=stage)
    stats = restore(root, [], Blobs(stage, {}), stage_dir=stage, scanner=scanner)
    assert scanner.scan().entries == []
    assert tree(root) == {"node_modules": "<dir>", "node_modules/d": "y", ".tether": "<dir>", ".tether/e": "z"}
    assert stats == RestoreStats(0, 0, 0, 0, 3)


def test_a_written_file_gets_an_mtime_older_than_the_racy_window(tmp_path: Path) -> None:
    """Restored files are dated back, so the primed cache can trust their stat and any later
    write, even in the same clock tick as the restore, gives them a different mtime."""
    root, stage = tmp_path / "ws", tmp_path / "stage"
    stage.mkdir()
    started = time.time_ns()
    restore(root, [entry("f", content=b"x")], Blobs(stage, {sha(b"x"): b"x"}), stage_dir=stage)
    assert os.lstat(root / "f").st_mtime_ns < started - 2 * 10**9
    shutil.rmtree(root)
