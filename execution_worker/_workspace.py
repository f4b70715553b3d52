"""Workspace checkpoints, worker side: scanning a session's workspace into content-addressed blobs.

This module owns what a checkpoint of a workspace *is* on the worker: which paths it holds (the
ignore rules: the worker's default ignores, the workspace's `.tetherignore`, and always the
top-level `.tether/`), the sorted `WorkspaceEntry` list, its content-defined manifest chunks,
and the stage directory where every blob a checkpoint names is copied (file contents under
their SHA-256, chunks under theirs) so that an upload sends exactly the bytes that were hashed.

A `WorkspaceScanner` keeps a stat cache between scans, so a re-scan reads only files whose
size, mtime, inode or ctime moved, plus the "racily clean" ones: files modified so close to the
scan that cached them that a later write in the same timestamp tick could leave their stat
unchanged (git's racy-git rule). Everything here is synchronous file-system code with no network
and no gRPC; the caller runs a scan in a thread while the session is quiescent. Making a
workspace match a checkpoint is `_workspace_restore`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tether.v1 import resources_pb2

_log = logging.getLogger("tether.execution_worker")

#: What the worker leaves out of every checkpoint unless its settings replace the list.
DEFAULT_IGNORES: tuple[str, ...] = ("node_modules/", ".venv/", "__pycache__/")

#: The workspace's own ignore file, in gitignore syntax, read afresh on every scan.
IGNORE_FILE = ".tetherignore"
#: A top-level path of this name (normally the worker's state directory) is never captured,
#: removed or restored over.
STATE_DIR = ".tether"

#: A cached stat is trusted only for files last modified this long before the scan that cached
#: them: a file written in the same timestamp tick as that scan could change again without its
#: stat changing (coarse file-system clocks tick up to 2 s).
RACY_SLACK_NS = 2_000_000_000

_BLOCK = 1 << 20
_READ_ATTEMPTS = 5
_CHUNK_MAX_ENTRIES = 512
_CHUNK_BOUNDARY_MASK = 0x3F

FILE = resources_pb2.WORKSPACE_ENTRY_KIND_FILE
DIRECTORY = resources_pb2.WORKSPACE_ENTRY_KIND_DIRECTORY
SYMLINK = resources_pb2.WORKSPACE_ENTRY_KIND_SYMLINK


class WorkspaceError(Exception):
    """A workspace could not be checkpointed or restored; the message says what to change."""


class IgnoreRules:
    """Which workspace paths a checkpoint leaves out: gitignore patterns (defaults first, then
    the `.tetherignore` lines, so the file may re-include with `!`) and, always, whatever is at
    the top-level `.tether` (the worker's own name; a checkpoint never holds it)."""

    def __init__(self, patterns: Sequence[str]) -> None:
        # Imported here: the `tether` command loads this module (for its defaults) on installs
        # without the worker extra, which brings pathspec.
        import pathspec

        self.patterns = tuple(patterns)
        self._spec = pathspec.GitIgnoreSpec.from_lines(self.patterns)
        self._memo: dict[str, bool] = {}

    @property
    def memo_size(self) -> int:
        """How many decisions are remembered (paths that went away included)."""
        return len(self._memo)

    def ignored(self, path: str, is_dir: bool) -> bool:
        """Whether the relative '/'-separated `path` is left out (a directory with all it holds)."""
        key = path + "/" if is_dir else path
        hit = self._memo.get(key)
        if hit is None:
            hit = path == STATE_DIR or self._spec.match_file(key)
            self._memo[key] = hit
        return hit


def read_ignore_file(root: Path) -> list[str]:
    """The lines of `<root>/.tetherignore`; none when it is missing, a directory or a symlink
    (it is read without following links, so it can never name a file outside the workspace)."""
    try:
        fd = os.open(root / IGNORE_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EISDIR):
            _log.warning("workspace: %s is not a regular file; it is not used", root / IGNORE_FILE)
            return []
        raise WorkspaceError(f"cannot read {root / IGNORE_FILE}: {error.strerror}") from error
    with open(fd, "rb") as f:
        return f.read().decode("utf-8", errors="replace").splitlines()


def is_chunk_boundary(path: str) -> bool:
    """A manifest chunk ends after this path (about one path in 64, decided by the path alone)."""
    return hashlib.sha256(path.encode()).digest()[0] & _CHUNK_BOUNDARY_MASK == 0


def chunk_spans(boundaries: Sequence[bool]) -> list[tuple[int, int]]:
    """How sorted entries are cut into manifest chunks, as (start, end) index pairs, given which
    paths are boundaries: a chunk ends after each boundary path, and after 512 entries without
    one. The cuts follow the paths, not positions, so adding or changing one entry changes the
    chunk holding it (and, when it adds or removes a cut, one neighbour) and no other."""
    spans = []
    start = 0
    for i, boundary in enumerate(boundaries):
        if boundary or i + 1 - start >= _CHUNK_MAX_ENTRIES:
            spans.append((start, i + 1))
            start = i + 1
    if start < len(boundaries):
        spans.append((start, len(boundaries)))
    return spans


def chunk_blob(entries: Sequence[resources_pb2.WorkspaceEntry]) -> tuple[str, bytes]:
    """One `WorkspaceManifestChunk` blob, serialized deterministically: (digest, bytes)."""
    blob = resources_pb2.WorkspaceManifestChunk(entries=entries).SerializeToString(deterministic=True)
    return hashlib.sha256(blob).hexdigest(), blob


def manifest_chunks(entries: Sequence[resources_pb2.WorkspaceEntry]) -> list[tuple[str, bytes]]:
    """Sorted `entries` cut into manifest chunk blobs: (digest, serialized) in order."""
    spans = chunk_spans([is_chunk_boundary(e.path) for e in entries])
    return [chunk_blob(entries[start:end]) for start, end in spans]


def is_digest(text: str) -> bool:
    """Whether `text` is a lowercase hex SHA-256 (and so a safe blob file name)."""
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class Checkpoint:
    """One scan's result: the manifest, its sorted entries, and which blobs are new."""

    manifest: resources_pb2.WorkspaceManifest
    entries: list[resources_pb2.WorkspaceEntry]
    #: Blobs (file contents and chunks) the previous scan's checkpoint did not name, in order of
    #: first appearance; each is staged at `blob_path(digest)`.
    new_digests: list[str]
    stage_dir: Path
    #: Regular files seen, files read (new, changed or racily clean), and the bytes read.
    files_scanned: int
    files_hashed: int
    bytes_hashed: int

    def blob_path(self, digest: str) -> Path:
        """Where the staged copy of blob `digest` is."""
        if not is_digest(digest):
            raise ValueError(f"not a blob digest: {digest!r}")
        return self.stage_dir / digest


class _Cached(NamedTuple):
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    digest: str
    #: When the scan (or restore) that vouched for `digest` started.
    cached_at_ns: int


#: An entry while a scan builds it: (path, kind, mode, size, digest, link_target).
_Row = tuple[str, resources_pb2.WorkspaceEntryKind, int, int, str, str]
#: A chunk of the last checkpoint: its rows -> (digest, its entries).
_ChunkCache = dict[tuple[_Row, ...], tuple[str, list[resources_pb2.WorkspaceEntry]]]
#: A chunk of a checkpoint: (digest, its blob or None if the last checkpoint had it, entries).
_Chunk = tuple[str, bytes | None, list[resources_pb2.WorkspaceEntry]]


class WorkspaceScanner:
    """Scans one workspace into `Checkpoint`s, re-reading only what changed since the last scan.

    Chunks the last scan already had are reused with their `WorkspaceEntry` messages, so
    checkpoints share entry messages: treat them as read-only. Not thread-safe: one scan (or
    restore using this scanner) at a time.
    """

    def __init__(self, root: Path, *, ignores: Sequence[str] = DEFAULT_IGNORES, stage_dir: Path) -> None:
        self.root = Path(os.path.abspath(root))
        self.stage_dir = Path(os.path.abspath(stage_dir))
        self.ignores = tuple(ignores)
        if self.stage_dir.is_relative_to(self.root) and not self.stage_dir.is_relative_to(self.root / STATE_DIR):
            raise ValueError(f"the stage directory {self.stage_dir} must be outside the workspace {self.root}")
        self._rules = IgnoreRules(self.ignores)
        self._buffer = bytearray(_BLOCK)
        self.forget()

    def forget(self) -> None:
        """Drop the stat cache and the previous checkpoint: the next scan reads and stages everything."""
        self._cache: dict[str, _Cached] = {}
        self._known: set[str] = set()
        self._chunks: _ChunkCache = {}
        self._boundaries: dict[str, bool] = {}

    def cached_digest(self, path: str, st: os.stat_result) -> str | None:
        """The digest of relative `path` if `st` (its lstat now) shows it unchanged since a scan
        that was not racy about it; None when it must be read."""
        cached = self._cache.get(path)
        if cached is None or not _unchanged(cached, st):
            return None
        return cached.digest

    def prime(self, entries: Sequence[resources_pb2.WorkspaceEntry], *, verified_at_ns: int) -> None:
        """Take `entries` as the last checkpoint (after a restore made the workspace match them):
        the files on disk now are cached with the entries' digests, as verified or written since
        `verified_at_ns`, and the next scan's `new_digests` leaves out every blob they name."""
        self.forget()
        for entry in entries:
            if entry.kind != FILE:
                continue
            try:
                st = os.lstat(self.root / entry.path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_size == entry.size:
                self._cache[entry.path] = _Cached(
                    st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, entry.digest, verified_at_ns
                )
        rows = [(e.path, e.kind, e.mode, e.size, e.digest, e.link_target) for e in entries]
        chunks, self._chunks, self._boundaries = self._chunk(rows)
        self._known = {e.digest for e in entries if e.kind == FILE} | {digest for digest, _, _ in chunks}

    def staged_cleanup(self, keep: set[str]) -> None:
        """Remove every staged file whose name is not in `keep` (once an upload has succeeded)."""
        try:
            names = os.listdir(self.stage_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name not in keep:
                try:
                    os.unlink(self.stage_dir / name)
                except OSError as error:
                    _log.debug("workspace: left %s in the stage directory: %s", name, error)

    def scan(self) -> Checkpoint:
        """Walk the workspace (never following a symlink) and stage what is new or changed."""
        started_ns = time.time_ns()
        patterns = (*self.ignores, *read_ignore_file(self.root))
        rules = self._rules
        # The same patterns keep their compiled rules and memo of decisions (compiling them
        # again for every after-turn checkpoint cost a shell worker about 2 % of its time),
        # unless paths that went away swelled the memo.
        if patterns != rules.patterns or rules.memo_size > 4 * len(self._cache) + 100_000:
            rules = IgnoreRules(patterns)
        os.makedirs(self.stage_dir, exist_ok=True)
        old_cache = self._cache
        cache: dict[str, _Cached] = {}
        rows: list[_Row] = []
        files_scanned = files_hashed = bytes_hashed = symlinks = total_bytes = 0
        pending = [("", str(self.root))]
        while pending:
            prefix, directory = pending.pop()
            try:
                listing = list(os.scandir(directory))
            except OSError as error:
                raise WorkspaceError(f"cannot list {prefix or '.'} in the workspace: {error.strerror}") from error
            for item in listing:
                path = prefix + item.name
                odd = not path.isascii() or "\\" in path
                if item.is_file(follow_symlinks=False):
                    if rules.ignored(path, False):
                        continue
                    if odd:
                        _check_path(path)
                    st = item.stat(follow_symlinks=False)
                    cached = old_cache.get(path)
                    if cached is None or not _unchanged(cached, st):
                        read = self._stage(path, item.path)
                        if read is None:
                            continue
                        st, digest = read
                        files_hashed += 1
                        bytes_hashed += st.st_size
                        cached = _Cached(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest, started_ns)
                    cache[path] = cached
                    files_scanned += 1
                    total_bytes += cached.size
                    rows.append((path, FILE, st.st_mode & 0o777, cached.size, cached.digest, ""))
                elif item.is_dir(follow_symlinks=False):
                    if rules.ignored(path, True):
                        continue
                    if odd:
                        _check_path(path)
                    st = item.stat(follow_symlinks=False)
                    rows.append((path, DIRECTORY, st.st_mode & 0o777, 0, "", ""))
                    pending.append((path + "/", item.path))
                elif item.is_symlink():
                    if rules.ignored(path, False):
                        continue
                    if odd:
                        _check_path(path)
                    target = os.readlink(item.path)
                    _check_utf8(path, target, "its link target")
                    rows.append((path, SYMLINK, 0, 0, "", target))
                    symlinks += 1
                else:
                    _log.debug("workspace: %s is a socket, fifo or device; it is not captured", path)
        rows.sort()
        counts = (files_scanned, files_hashed, bytes_hashed)
        return self._checkpoint(rows, cache, rules, counts, files_scanned + symlinks, total_bytes)

    def _checkpoint(
        self,
        rows: list[_Row],
        cache: dict[str, _Cached],
        rules: IgnoreRules,
        counts: tuple[int, int, int],
        file_count: int,
        total_bytes: int,
    ) -> Checkpoint:
        new_digests: list[str] = []
        seen = set(self._known)
        for _, kind, _, _, digest, _ in rows:
            if kind == FILE and digest not in seen:
                seen.add(digest)
                new_digests.append(digest)
        chunks, chunk_cache, boundaries = self._chunk(rows)
        entries: list[resources_pb2.WorkspaceEntry] = []
        for digest, blob, chunk_entries in chunks:
            entries.extend(chunk_entries)
            if digest not in seen:
                seen.add(digest)
                new_digests.append(digest)
                _write_blob(self.stage_dir, digest, blob or chunk_blob(chunk_entries)[1])
        manifest = resources_pb2.WorkspaceManifest(
            chunk_digests=[digest for digest, _, _ in chunks], file_count=file_count, total_bytes=total_bytes
        )
        # Only a scan that got this far replaces what the next one compares with.
        self._cache, self._rules, self._chunks, self._boundaries = cache, rules, chunk_cache, boundaries
        self._known = {row[4] for row in rows if row[1] == FILE} | {digest for digest, _, _ in chunks}
        return Checkpoint(manifest, entries, new_digests, self.stage_dir, *counts)

    def _chunk(self, rows: list[_Row]) -> tuple[list[_Chunk], _ChunkCache, dict[str, bool]]:
        """Cut sorted `rows` into chunks, reusing the last checkpoint's unchanged ones (their
        blob is then None: it was staged before). Returns the chunks, and the chunk cache and
        boundary memo for the next scan."""
        old_boundaries: dict[str, bool] = self._boundaries
        boundaries: dict[str, bool] = {}
        for row in rows:
            path = row[0]
            hit = old_boundaries.get(path)
            boundaries[path] = is_chunk_boundary(path) if hit is None else hit
        old_chunks = self._chunks
        chunk_cache: _ChunkCache = {}
        chunks: list[_Chunk] = []
        for start, end in chunk_spans(list(boundaries.values())):
            key = tuple(rows[start:end])
            known = old_chunks.get(key)
            if known is None:
                new_entries = [_entry(row) for row in key]
                digest, blob = chunk_blob(new_entries)
                known = (digest, new_entries)
                chunks.append((digest, blob, new_entries))
            else:
                chunks.append((known[0], None, known[1]))
            chunk_cache[key] = known
        return chunks, chunk_cache, boundaries

    def _stage(self, path: str, abs_path: str) -> tuple[os.stat_result, str] | None:
        """Read the file once, hashing it while copying it into the stage directory; returns its
        stat (from before the read, equal to after it) and digest, or None if it vanished."""
        for _ in range(_READ_ATTEMPTS):
            try:
                fd = os.open(abs_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                _log.debug("workspace: %s went away during the scan", path)
                return None
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise WorkspaceError(
                        f"{path} turned into a symlink during the scan; checkpoint the workspace while it is idle"
                    ) from error
                raise WorkspaceError(f"cannot read {path} in the workspace: {error.strerror}") from error
            try:
                read = self._copy_to_stage(path, fd)
            finally:
                os.close(fd)
            if read is not None:
                return read
            _log.debug("workspace: %s changed while it was read; reading it again", path)
        raise WorkspaceError(
            f"{path} kept changing while it was read ({_READ_ATTEMPTS} attempts); "
            "checkpoint the workspace while the session is idle, or add the file to .tetherignore"
        )

    def _copy_to_stage(self, path: str, fd: int) -> tuple[os.stat_result, str] | None:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise WorkspaceError(f"{path} stopped being a regular file during the scan")
        digest = hashlib.sha256()
        size = 0
        view = memoryview(self._buffer)
        try:
            out, temp = tempfile.mkstemp(dir=self.stage_dir, prefix=".tmp-")
        except OSError as error:
            raise _staging_error(path, error) from error
        try:
            with open(fd, "rb", buffering=0, closefd=False) as src:
                while n := src.readinto(view):
                    digest.update(view[:n])
                    _write_all(out, view[:n])
                    size += n
            os.close(out)
            out = -1
            after = os.fstat(fd)
            if (size, after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
                before.st_size,
                before.st_size,
                before.st_mtime_ns,
                before.st_ctime_ns,
            ):
                return None
            name = digest.hexdigest()
            target = self.stage_dir / name
            if target.exists():
                return before, name
            os.replace(temp, target)
            temp = ""
            return before, name
        except OSError as error:
            raise _staging_error(path, error) from error
        finally:
            if out >= 0:
                os.close(out)
            if temp:
                _unlink_quietly(temp)


def _unchanged(cached: _Cached, st: os.stat_result) -> bool:
    return (
        cached.size == st.st_size
        and cached.mtime_ns == st.st_mtime_ns
        and cached.ino == st.st_ino
        and cached.ctime_ns == st.st_ctime_ns
        and st.st_mtime_ns < cached.cached_at_ns - RACY_SLACK_NS
    )


def _entry(row: _Row) -> resources_pb2.WorkspaceEntry:
    path, kind, mode, size, digest, link_target = row
    return resources_pb2.WorkspaceEntry(
        path=path,
        kind=kind,
        mode=mode,
        size=size,
        digest=digest,
        link_target=link_target,
    )


def _check_path(path: str) -> None:
    """Checkpoints hold UTF-8 paths without backslashes (restore refuses anything else)."""
    if path.isascii() and "\\" not in path:
        return
    _check_utf8(path, path, "its name")
    if "\\" in path:
        raise WorkspaceError(
            f"{path!r}: a backslash in a path cannot be restored; rename it or add it to .tetherignore"
        )


def _check_utf8(path: str, text: str, what: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise WorkspaceError(f"{path!r}: {what} is not valid UTF-8; rename it or add it to .tetherignore") from None


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        data = data[os.write(fd, data) :]


def _write_blob(stage_dir: Path, digest: str, blob: bytes) -> None:
    target = stage_dir / digest
    if target.exists():
        return
    out, temp = tempfile.mkstemp(dir=stage_dir, prefix=".tmp-")
    try:
        _write_all(out, memoryview(blob))
        os.close(out)
        out = -1
        os.replace(temp, target)
        temp = ""
    except OSError as error:
        raise _staging_error(f"a manifest chunk ({digest})", error) from error
    finally:
        if out >= 0:
            os.close(out)
        if temp:
            _unlink_quietly(temp)


def _staging_error(what: str, error: OSError) -> WorkspaceError:
    if error.errno == errno.ENOSPC:
        return WorkspaceError(
            f"workspace checkpoint failed: no space left on device while staging {what}; free disk space on the worker"
        )
    return WorkspaceError(f"workspace checkpoint failed while staging {what}: {error.strerror or error}")


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
