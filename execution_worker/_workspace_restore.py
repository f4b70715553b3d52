"""Making a workspace match a checkpoint, safely.

This module owns the worker's side of restoring a workspace checkpoint: refusing entries that
could write outside the workspace (`validate_entries`), keeping the files already on disk with
the right content and mode, fetching and verifying only the blobs it lacks, writing each file
atomically (a temporary file in the target's directory, then `os.replace`), creating symlinks
without ever following one, and removing what the checkpoint does not hold, except the paths
its ignore rules leave out and the top-level `.tether/`.

A checkpoint's entries may be hand-crafted, and the workspace on disk may hold symlinks that
point anywhere, so every directory a file is written into is checked to be a real directory
inside the workspace, and removal unlinks links rather than what they point to. Everything is
synchronous file-system code; the worker runs it in a thread before the runtime starts, and
does not start the runtime when it raises.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tether.execution_worker._workspace import (
    DEFAULT_IGNORES,
    DIRECTORY,
    FILE,
    IGNORE_FILE,
    RACY_SLACK_NS,
    STATE_DIR,
    SYMLINK,
    IgnoreRules,
    WorkspaceError,
    WorkspaceScanner,
    is_digest,
)
from tether.v1 import resources_pb2

_log = logging.getLogger("tether.execution_worker")

#: Downloads the blobs named, yielding (digest, path of the downloaded file) for each. The files
#: belong in the stage directory (the same file system): restore verifies each one and renames
#: it there under its digest.
Fetch = Callable[[list[str]], Iterable[tuple[str, Path]]]

_BLOCK = 1 << 20
_TEMP_PREFIX = ".tether-tmp-"
_KINDS = (FILE, DIRECTORY, SYMLINK)


@dataclass(frozen=True)
class RestoreStats:
    """What a restore did (the `WorkspaceRestored` event's figures)."""

    #: Files and symlinks in the checkpoint, and the bytes of file content.
    file_count: int
    total_bytes: int
    #: Files and symlinks written (the rest were already on disk as the checkpoint has them).
    files_written: int
    #: Bytes of the blobs `fetch` delivered.
    bytes_downloaded: int
    #: Paths removed because the checkpoint does not have them (each file, link and directory).
    files_removed: int


def validate_entries(entries: Sequence[resources_pb2.WorkspaceEntry]) -> None:
    """Refuse entries that are not a well-formed checkpoint: paths that leave the workspace or
    pass through anything but a directory entry, bad kinds, modes or digests, disorder."""
    kinds: dict[str, int] = {}
    previous = ""
    for entry in entries:
        path = entry.path
        if not path:
            raise WorkspaceError("invalid workspace checkpoint: an entry has an empty path")
        if path.startswith("/"):
            raise WorkspaceError(f"invalid workspace checkpoint: {path!r} is an absolute path")
        if "\\" in path or "\x00" in path:
            raise WorkspaceError(f"invalid workspace checkpoint: {path!r} holds a backslash or NUL")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise WorkspaceError(f"invalid workspace checkpoint: {path!r} has an empty, '.' or '..' component")
        if path == previous:
            raise WorkspaceError(f"invalid workspace checkpoint: {path!r} appears twice")
        if path < previous:  # code point order is UTF-8 byte order
            raise WorkspaceError(
                f"invalid workspace checkpoint: {path!r} comes after {previous!r}; entries are unsorted"
            )
        if path.partition("/")[0] == STATE_DIR:
            raise WorkspaceError(f"invalid workspace checkpoint: {path!r} is in the worker's {STATE_DIR}/ directory")
        if entry.kind not in _KINDS:
            raise WorkspaceError(f"invalid workspace checkpoint: {path!r} has no valid kind ({entry.kind})")
        if entry.mode & ~0o777:
            raise WorkspaceError(f"invalid workspace checkpoint: {path!r} has mode {entry.mode:#o} (at most 0o777)")
        if entry.kind == FILE and not is_digest(entry.digest):
            raise WorkspaceError(f"invalid workspace checkpoint: file {path!r} has no SHA-256 digest")
        if entry.kind == SYMLINK and (not entry.link_target or "\x00" in entry.link_target):
            raise WorkspaceError(f"invalid workspace checkpoint: symlink {path!r} has an empty or NUL target")
        parent = path.rpartition("/")[0]
        if parent and kinds.get(parent) != DIRECTORY:
            if kinds.get(parent) == SYMLINK:
                raise WorkspaceError(f"invalid workspace checkpoint: {path!r} lies through the symlink {parent!r}")
            raise WorkspaceError(f"invalid workspace checkpoint: the parent of {path!r} is not a directory entry")
        kinds[path] = entry.kind
        previous = path


def restore(
    root: Path,
    entries: Sequence[resources_pb2.WorkspaceEntry],
    fetch: Fetch,
    *,
    ignores: Sequence[str] = DEFAULT_IGNORES,
    stage_dir: Path,
    scanner: WorkspaceScanner | None = None,
) -> RestoreStats:
    """Make the workspace at `root` hold exactly `entries` (beside its ignored paths).

    Blobs found neither in the workspace (at any path) nor in `stage_dir` are asked of `fetch`;
    exceptions it raises pass through (an OSError becomes a `WorkspaceError`). When `scanner` (of the same workspace) is given, its cache spares
    re-reading unchanged local files, and afterwards it is primed with the restored files.
    Raises `WorkspaceError`; a target path never holds a partly written file.
    """
    validate_entries(entries)
    try:
        return _Restore(Path(root), entries, Path(stage_dir), scanner).run(fetch, ignores)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise WorkspaceError(
                "workspace restore failed: no space left on device"
                + (f" (writing {error.filename})" if error.filename else "")
                + "; free disk space on the worker or make the workspace smaller"
            ) from error
        raise WorkspaceError(
            f"workspace restore failed: {error.filename or 'the workspace'}: {error.strerror or error}"
        ) from error


class _Restore:
    """One restore: the steps of `restore`, sharing what the earlier steps found."""

    def __init__(
        self,
        root: Path,
        entries: Sequence[resources_pb2.WorkspaceEntry],
        stage_dir: Path,
        scanner: WorkspaceScanner | None,
    ) -> None:
        os.makedirs(root, exist_ok=True)
        self.root = os.path.realpath(root)
        self.stage_dir = os.path.realpath(stage_dir)
        if _inside(self.stage_dir, self.root) and not _inside(self.stage_dir, os.path.join(self.root, STATE_DIR)):
            raise ValueError(f"the stage directory {stage_dir} must be outside the workspace {root}")
        if scanner is not None and os.path.realpath(scanner.root) != self.root:
            raise ValueError(f"the scanner is for {scanner.root}, not {root}")
        self.entries = entries
        self.scanner = scanner
        self.kinds = {e.path: e.kind for e in entries}
        self.started_ns = time.time_ns()
        #: Written files' mtime: old enough that the primed cache trusts it, and that any later
        #: write gives the file a different one.
        self.stamp_ns = self.started_ns - RACY_SLACK_NS - 1_000_000_000
        #: Digest -> a file holding that content (a verified staged blob or a kept workspace file).
        self.sources: dict[str, str] = {}
        self.kept: set[str] = set()
        self.removed = 0
        self._real_dirs: dict[str, bool] = {"": True}
        self._checked_parents: dict[str, str] = {}

    def run(self, fetch: Fetch, ignores: Sequence[str]) -> RestoreStats:
        os.makedirs(self.stage_dir, exist_ok=True)
        self._find_kept()
        downloaded = self._fetch_missing(fetch)
        rules = IgnoreRules([*ignores, *self._checkpoint_ignore_lines()])
        self._remove_stale(rules)
        self._make_directories()
        written = self._write_files() + self._write_symlinks()
        self._set_directory_modes()
        if self.scanner is not None:
            self.scanner.prime(self.entries, verified_at_ns=self.started_ns)
        files = [e for e in self.entries if e.kind != DIRECTORY]
        return RestoreStats(
            file_count=len(files),
            total_bytes=sum(e.size for e in files),
            files_written=written,
            bytes_downloaded=downloaded,
            files_removed=self.removed,
        )

    def _abs(self, path: str) -> str:
        return os.path.join(self.root, path) if path else self.root

    def _is_real_dir(self, path: str) -> bool:
        """Whether relative `path` and each directory above it are real directories now."""
        known = self._real_dirs.get(path)
        if known is None:
            parent = path.rpartition("/")[0]
            known = self._is_real_dir(parent) and _lstat_kind(self._abs(path)) == stat.S_IFDIR
            self._real_dirs[path] = known
        return known

    def _find_kept(self) -> None:
        """Files and symlinks already on disk exactly as the checkpoint has them."""
        for entry in self.entries:
            if entry.kind == DIRECTORY or not self._is_real_dir(entry.path.rpartition("/")[0]):
                continue
            target = self._abs(entry.path)
            try:
                st = os.lstat(target)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if entry.kind == SYMLINK:
                if stat.S_ISLNK(st.st_mode) and os.readlink(target) == entry.link_target:
                    self.kept.add(entry.path)
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                continue
            digest = self.scanner.cached_digest(entry.path, st) if self.scanner is not None else None
            if digest is None:
                digest, _ = _digest_of(target)
            if digest == entry.digest:
                # With the wrong mode it is rewritten, but its content need not be fetched.
                self.sources.setdefault(digest, target)
                if stat.S_IMODE(st.st_mode) == entry.mode:
                    self.kept.add(entry.path)

    def _fetch_missing(self, fetch: Fetch) -> int:
        """Fetch the blobs neither kept on disk nor staged; returns the bytes downloaded."""
        missing: list[str] = []
        wanted: set[str] = set()
        for entry in self.entries:
            digest = entry.digest
            if entry.kind != FILE or entry.path in self.kept or digest in self.sources or digest in wanted:
                continue
            if not self._use_staged(digest):
                missing.append(digest)
                wanted.add(digest)
        if not missing:
            return 0
        downloaded = 0
        for digest, path in fetch(list(missing)):
            if digest not in wanted:
                _log.debug("workspace restore: fetch delivered %s, which was not asked for", digest)
                continue
            actual, size = _digest_of(str(path))
            if actual != digest:
                _unlink_quietly(path)
                raise WorkspaceError(
                    f"workspace restore failed: downloaded blob {path} has SHA-256 {actual}, expected {digest}"
                )
            downloaded += size
            staged = os.path.join(self.stage_dir, digest)
            if os.path.abspath(path) != staged:
                os.replace(path, staged)
            self.sources[digest] = staged
        absent = [digest for digest in missing if digest not in self.sources]
        if absent:
            raise WorkspaceError(
                f"workspace restore failed: blob {absent[0]} missing from the download "
                f"({len(absent)} of {len(missing)} requested blobs did not arrive)"
            )
        return downloaded

    def _use_staged(self, digest: str) -> bool:
        """Whether the stage directory holds blob `digest` intact (a damaged copy is dropped)."""
        staged = os.path.join(self.stage_dir, digest)
        if _lstat_kind(staged) != stat.S_IFREG:
            return False
        if _digest_of(staged)[0] != digest:
            _log.warning("workspace restore: staged blob %s was damaged; fetching it again", digest)
            _unlink_quietly(staged)
            return False
        self.sources[digest] = staged
        return True

    def _checkpoint_ignore_lines(self) -> list[str]:
        """The `.tetherignore` the checkpoint carries: its rules govern what removal leaves."""
        for entry in self.entries:
            if entry.path == IGNORE_FILE and entry.kind == FILE:
                with open(self.sources[entry.digest], "rb") as f:
                    return f.read().decode("utf-8", errors="replace").splitlines()
        return []

    def _remove_stale(self, rules: IgnoreRules) -> None:
        """Remove what is on disk but not in the checkpoint (or there as another kind), except
        ignored paths; a directory the checkpoint lacks stays only to hold ignored ones."""
        # (relative path, absolute path, in the checkpoint, mode to restore if kept, finishing)
        pending: list[tuple[str, str, bool, int, bool]] = [("", self.root, True, 0, False)]
        while pending:
            path, target, listed, mode, finishing = pending.pop()
            if finishing:
                try:
                    os.rmdir(target)
                    self.removed += 1
                except OSError as error:
                    if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    os.chmod(target, mode)  # it holds ignored paths: it stays, as it was
                continue
            mode = _make_usable(target)
            if not listed:
                pending.append((path, target, False, mode, True))
            with os.scandir(target) as listing:
                items = list(listing)
            for item in items:
                child = f"{path}/{item.name}" if path else item.name
                is_dir = item.is_dir(follow_symlinks=False)
                if rules.ignored(child, is_dir):
                    continue
                kind = self.kinds.get(child)
                if is_dir and kind in (DIRECTORY, None):
                    pending.append((child, item.path, kind == DIRECTORY, 0, False))
                elif is_dir:
                    self.removed += _remove_tree(item.path)
                elif not (
                    (kind == FILE and item.is_file(follow_symlinks=False)) or (kind == SYMLINK and item.is_symlink())
                ):
                    os.unlink(item.path)
                    self.removed += 1

    def _make_directories(self) -> None:
        """Every directory entry becomes a real directory the restore can write into; whatever
        else held its path (a symlink, a file, both possibly ignored) is removed first."""
        for entry in self.entries:
            if entry.kind != DIRECTORY:
                continue
            target = self._abs(entry.path)
            kind = _lstat_kind(target)
            if kind == stat.S_IFDIR:
                _make_usable(target)
                continue
            if kind is not None:
                os.unlink(target)
                self.removed += 1
            os.mkdir(target, 0o700)

    def _parent(self, path: str) -> str:
        """The absolute directory to write `path` into, checked to be a real directory (every
        component) inside the workspace."""
        parent = path.rpartition("/")[0]
        checked = self._checked_parents.get(parent)
        if checked is None:
            checked = self._abs(parent)
            step = ""
            for part in parent.split("/") if parent else ():
                step = f"{step}/{part}" if step else part
                if _lstat_kind(self._abs(step)) != stat.S_IFDIR:
                    raise WorkspaceError(f"workspace restore failed: {step!r} is not a directory")
            if not _inside(os.path.realpath(checked), self.root):
                raise WorkspaceError(f"workspace restore failed: {parent!r} leads outside the workspace")
            self._checked_parents[parent] = checked
        return checked

    def _write_files(self) -> int:
        written = 0
        # How many files still need each blob: a verified staged blob's last use is moved into
        # place (one rename) instead of copied and hashed again.
        uses = collections.Counter(e.digest for e in self.entries if e.kind == FILE and e.path not in self.kept)
        for entry in self.entries:
            if entry.kind != FILE or entry.path in self.kept:
                continue
            uses[entry.digest] -= 1
            if not uses[entry.digest] and self._move_staged(entry):
                written += 1
                continue
            directory = self._parent(entry.path)
            temp = os.path.join(directory, _TEMP_PREFIX + secrets.token_hex(8))
            out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                try:
                    digest, size = _digest_of(self.sources[entry.digest], out)
                    if digest != entry.digest or size != entry.size:
                        raise WorkspaceError(
                            f"workspace restore failed: the content for {entry.path!r} has SHA-256 {digest} and "
                            f"{size} bytes; the checkpoint says {entry.digest} and {entry.size} bytes"
                        )
                    os.fchmod(out, entry.mode)
                    os.utime(out, ns=(self.stamp_ns, self.stamp_ns))
                finally:
                    os.close(out)
                self._replace(temp, entry.path)
            except BaseException:
                _unlink_quietly(temp)
                raise
            written += 1
        return written

    def _move_staged(self, entry: resources_pb2.WorkspaceEntry) -> bool:
        """Move the staged blob of `entry` (verified when it was fetched or found staged) to
        its path, with its mode and the restore's stamp; False when it is not staged here or
        lies on another file system (then it is copied)."""
        source = self.sources[entry.digest]
        if os.path.dirname(source) != self.stage_dir:
            return False
        directory = self._parent(entry.path)
        try:
            os.chmod(source, entry.mode, follow_symlinks=False)
            os.utime(source, ns=(self.stamp_ns, self.stamp_ns), follow_symlinks=False)
            temp = os.path.join(directory, _TEMP_PREFIX + secrets.token_hex(8))
            os.rename(source, temp)
        except OSError as error:
            if error.errno == errno.EXDEV:
                return False
            raise
        try:
            self._replace(temp, entry.path)
        except BaseException:
            _unlink_quietly(temp)
            raise
        del self.sources[entry.digest]
        return True

    def _write_symlinks(self) -> int:
        written = 0
        for entry in self.entries:
            if entry.kind != SYMLINK or entry.path in self.kept:
                continue
            temp = os.path.join(self._parent(entry.path), _TEMP_PREFIX + secrets.token_hex(8))
            os.symlink(entry.link_target, temp)
            try:
                self._replace(temp, entry.path)
            except BaseException:
                _unlink_quietly(temp)
                raise
            written += 1
        return written

    def _replace(self, temp: str, path: str) -> None:
        """Put `temp` at `path`; a real directory there (kept because it was ignored) goes first."""
        target = self._abs(path)
        if _lstat_kind(target) == stat.S_IFDIR:
            self.removed += _remove_tree(target)
        os.replace(temp, target)

    def _set_directory_modes(self) -> None:
        for entry in reversed(self.entries):
            if entry.kind == DIRECTORY:
                target = self._abs(entry.path)
                st = os.lstat(target)
                if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) != entry.mode:
                    os.chmod(target, entry.mode)


def _inside(path: str, directory: str) -> bool:
    """Whether the absolute `path` is `directory` or below it."""
    return path == directory or path.startswith(os.path.join(directory, ""))


def _lstat_kind(path: str) -> int | None:
    """The file type bits of `path` itself (a symlink is a symlink), or None if nothing is there."""
    try:
        return stat.S_IFMT(os.lstat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _make_usable(directory: str) -> int:
    """Give the owner rwx on the real directory `directory`, so it can be listed and written;
    returns its mode before (the final modes are set at the end)."""
    mode = stat.S_IMODE(os.lstat(directory).st_mode)
    if mode & 0o700 != 0o700:
        os.chmod(directory, mode | 0o700)
    return mode


def _remove_tree(top: str) -> int:
    """Remove `top` and all it holds without following a symlink; returns the paths removed."""
    if _lstat_kind(top) != stat.S_IFDIR:
        os.unlink(top)
        return 1
    removed = 0
    pending = [(top, False)]
    while pending:
        directory, emptied = pending.pop()
        if emptied:
            os.rmdir(directory)
            removed += 1
            continue
        _make_usable(directory)
        pending.append((directory, True))
        with os.scandir(directory) as listing:
            for item in listing:
                if item.is_dir(follow_symlinks=False):
                    pending.append((item.path, False))
                else:
                    os.unlink(item.path)
                    removed += 1
    return removed


def _digest_of(path: str, out: int | None = None) -> tuple[str, int]:
    """SHA-256 and size of the regular file at `path` (never through a symlink at its end),
    read in blocks and copied to the open file `out` when one is given."""
    digest = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise WorkspaceError(f"workspace restore failed: {path} is not a regular file")
        while block := os.read(fd, _BLOCK):
            digest.update(block)
            size += len(block)
            if out is not None:
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view) :]
    finally:
        os.close(fd)
    return digest.hexdigest(), size


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
