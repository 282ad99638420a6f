"""The archive writer: exactly-once, atomic archives of an agent's logs and final object.

Layout (SPEC §4): `<root>/<namespace>/<agent name>/<agent uid>/` holding `<container>.log`,
`<container>.previous.log`, `prompt.txt`, `agent.json` and, written last, `MANIFEST.json`.
Orphan pods go to `<root>/<namespace>/_orphans/<pod uid>/`.

Files are written into an in-progress sibling directory (`.<uid>.capture`: the logs of a running
agent are captured there from when its pod runs, each log file with a small `.state` beside it
saying how far it got, so that a restarted controller, or another replica after a failover, resumes
it), made durable, then renamed into place (and the rename made durable). An archive whose
`MANIFEST.json` exists is complete and is never written again.

Durability: on Linux, a group commit — one `syncfs()` of the archive file system makes the writes of
every archive that finished writing before it started durable at once (many cleanups at a time share
one flush instead of six fsyncs each: the archive volume's flush rate, not the CPU, used to bound a
burst of cleanups). Elsewhere, or if syncfs is unavailable, every file and directory is fsynced.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .names import InvalidName, check_name, check_namespace, check_uid, is_dns_label

MANIFEST = "MANIFEST.json"
ORPHANS = "_orphans"
PARTIAL_MARK = ".partial-"       # the in-progress directories of earlier versions (removed)
CAPTURE_MARK = ".capture"
STATE_SUFFIX = ".state"
SHIPPED_SUFFIX = ".shipped"       # <container>.log.shipped: the output agentctl run shipped (controller/ship.py)
FINAL_SUFFIX = ".final"          # <container>.log.shipped.final: {"bytes": N}, all of it arrived
# <archive root>/.ship-tls: the ship endpoint's self-made CA and certificate when no Secret is given,
# shared by every replica through the volume (no namespace name starts with a dot).
SHIP_TLS_DIR = ".ship-tls"
RESERVE = "reserve"              # room held on the volume while a pod is stopped (PendingArchive.reserve)
RESERVE_BYTES = 1024 * 1024


class ArchiveError(Exception):
    """Archiving failed; `reason` is a bounded metric label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ArchiveResult:
    directory: Path
    files: list[str]          # relative to the archive root, MANIFEST.json last
    bytes: int
    already_existed: bool = False
    logs_complete: bool = True        # every log entry in MANIFEST.json is `complete`
    missing: list[str] = field(default_factory=list)   # the `missing` reason of each incomplete entry


class GroupSync:
    """Make what was written before the call durable, sharing one `syncfs()` among concurrent callers.

    A caller needs a sync that *starts* after its writes: it takes the number of the next sync to
    start, and returns once that one (or a later one) has completed. Whoever finds no sync running
    runs it for everybody waiting. A failed sync counts for nobody (the next caller runs its own).
    """

    def __init__(self, root: Path):
        self.root = root
        self._cond = threading.Condition()
        self._started = 0      # number of the latest sync started
        self._done = 0         # number of the latest sync completed successfully
        self._running = False
        self._fd: int | None = None

    def wait_durable(self) -> None:
        with self._cond:
            ticket = self._started + 1
            while self._done < ticket:
                if self._running:
                    self._cond.wait()
                    continue
                self._running = True
                self._started += 1
                number = self._started
                ok = False
                self._cond.release()
                try:
                    self._syncfs()
                    ok = True
                finally:
                    self._cond.acquire()
                    self._running = False
                    if ok:
                        self._done = max(self._done, number)
                    self._cond.notify_all()

    def _syncfs(self) -> None:
        if self._fd is None:
            self._fd = os.open(self.root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        if _LIBC.syncfs(self._fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"syncfs({self.root}): {os.strerror(code)}")


def _load_syncfs() -> Any:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_syncfs()


class Archive:
    def __init__(self, root: str | os.PathLike[str], group_sync: bool | None = None):
        self.root = Path(root)
        # None: syncfs where available (Linux). False: fsync every file and directory.
        self._group: GroupSync | None = None
        self._group_sync = (_LIBC is not None) if group_sync is None else (group_sync and _LIBC is not None)
        self._group_lock = threading.Lock()

    def durable(self, paths: list[Path], directories: list[Path]) -> None:
        """Everything written so far to `paths` (files) and in `directories` is on disk afterwards."""
        if self._group_sync:
            with self._group_lock:
                if self._group is None:
                    self.root.mkdir(parents=True, exist_ok=True)
                    self._group = GroupSync(self.root)
            try:
                self._group.wait_durable()
                return
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EINVAL, errno.EPERM):
                    raise
                self._group_sync = False       # not supported here: fall back to fsync
        for path in paths:
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
        for directory in directories:
            _fsync_dir(directory)

    def agent_dir(self, namespace: str, name: str, uid: str) -> Path:
        try:
            return self.root / check_namespace(namespace) / check_name(name) / check_uid(uid)
        except InvalidName as exc:
            raise ArchiveError("invalid_name", str(exc)) from exc

    def orphan_dir(self, namespace: str, pod_uid: str) -> Path:
        try:
            return self.root / check_namespace(namespace) / ORPHANS / check_uid(pod_uid)
        except InvalidName as exc:
            raise ArchiveError("invalid_name", str(exc)) from exc

    @staticmethod
    def is_complete(directory: Path) -> bool:
        return (directory / MANIFEST).is_file()

    def existing(self, directory: Path) -> ArchiveResult:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = [self._rel(directory / f["name"]) for f in manifest["files"]] + [self._rel(directory / MANIFEST)]
        size = sum(f["size"] for f in manifest["files"]) + (directory / MANIFEST).stat().st_size
        missing = [str(f.get("missing") or "") for f in manifest["files"] if f.get("complete") is False]
        return ArchiveResult(directory, files, size, already_existed=True, logs_complete=not missing, missing=missing)

    def begin(self, directory: Path) -> PendingArchive:
        """Open the archive's in-progress directory, creating it (this is also the writability check).

        What an earlier run captured there is kept: its log files are resumed where their `.state`
        says (PendingArchive.open_log), or — when nothing can be read any more (the pod is gone) —
        finished as they are (`salvaged`).
        """
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.capture_dir(directory)
            tmp.mkdir(exist_ok=True)
            for old in directory.parent.glob(f".{directory.name}{PARTIAL_MARK}*"):
                shutil.rmtree(old, ignore_errors=True)
            salvaged: list[str] = []
            for leftover in tmp.iterdir():
                if leftover.name.endswith(".log") and leftover.is_file():
                    salvaged.append(leftover.name)
                elif not leftover.name.endswith((".log" + STATE_SUFFIX, SHIPPED_SUFFIX, SHIPPED_SUFFIX + FINAL_SUFFIX)):
                    leftover.unlink()
        except OSError as exc:
            raise ArchiveError("not_writable", f"archive directory {directory.parent} is not writable: {exc}") from exc
        return PendingArchive(self, directory, tmp, salvaged=sorted(salvaged))

    @staticmethod
    def capture_dir(directory: Path) -> Path:
        """The in-progress directory of the archive `directory` (renamed into place when sealed)."""
        return directory.parent / f".{directory.name}{CAPTURE_MARK}"

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


@dataclass
class PendingArchive:
    archive: Archive
    final: Path
    tmp: Path
    salvaged: list[str] = field(default_factory=list)   # log files kept from an interrupted run
    logs: dict[str, dict[str, Any]] = field(default_factory=dict)   # log file -> its completeness (MANIFEST)
    _handles: dict[str, IO[bytes]] = field(default_factory=dict)

    def open(self, filename: str) -> IO[bytes]:
        """A new binary file in the in-progress directory."""
        _check_filename(filename)
        try:
            handle = open(self.tmp / filename, "wb", buffering=0)  # streamed bytes reach the file at once
        except OSError as exc:
            raise ArchiveError("write", f"cannot write {filename}: {exc}") from exc
        self._handles[filename] = handle
        return handle

    def log_state(self, filename: str) -> dict[str, Any] | None:
        """How far an earlier run got with this log file (its `.state`), if it did."""
        _check_filename(filename)
        try:
            state = json.loads((self.tmp / (filename + STATE_SUFFIX)).read_text())
            size = (self.tmp / filename).stat().st_size
        except (OSError, ValueError):
            return None
        if not isinstance(state, dict) or int(state.get("bytes", -1)) > size:
            return None
        return state

    def open_log(self, filename: str, state: dict[str, Any] | None) -> IO[bytes]:
        """The log file, continued after what `state` says was written (a torn tail is cut off), or new."""
        if state is None:
            return self.open(filename)
        try:
            handle = open(self.tmp / filename, "r+b", buffering=0)
            handle.truncate(int(state["bytes"]))
            handle.seek(0, os.SEEK_END)
        except OSError as exc:
            raise ArchiveError("write", f"cannot write {filename}: {exc}") from exc
        self._handles[filename] = handle
        return handle

    def save_state(self, filename: str, state: dict[str, Any]) -> None:
        """Record how far `filename` got (after its bytes were written)."""
        path = self.tmp / (filename + STATE_SUFFIX)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def shipped(self, filename: str, expected: int | None = None) -> int | None:
        """The size of the shipped copy of `filename` if all of it arrived — agentctl run said so
        (`final`) and the file holds exactly that much, or it holds the `expected` bytes the agent
        reported —, else None. Blocking."""
        _check_filename(filename)
        try:
            size = (self.tmp / (filename + SHIPPED_SUFFIX)).stat().st_size
        except OSError:
            return None
        try:
            final = json.loads((self.tmp / (filename + SHIPPED_SUFFIX + FINAL_SUFFIX)).read_text())
        except (OSError, ValueError):
            final = None
        told = final.get("bytes") if isinstance(final, dict) else None
        if expected is not None:
            return size if expected == size and told in (None, size) else None
        return size if told == size else None

    def size(self, filename: str) -> int | None:
        """The size of `filename` in the in-progress directory, None if it is not there. Blocking."""
        _check_filename(filename)
        try:
            return (self.tmp / filename).stat().st_size
        except OSError:
            return None

    def use_shipped(self, filename: str) -> None:
        """The shipped copy becomes `filename` (the copy read from the API is dropped). Blocking."""
        handle = self._handles.pop(filename, None)
        if handle is not None:
            handle.close()
        os.replace(self.tmp / (filename + SHIPPED_SUFFIX), self.tmp / filename)
        (self.tmp / (filename + STATE_SUFFIX)).unlink(missing_ok=True)
        self._handles[filename] = open(self.tmp / filename, "ab", buffering=0)
        if filename in self.salvaged:
            self.salvaged.remove(filename)

    def never_read(self, filename: str, entry: dict[str, Any]) -> None:
        """A log that existed and could not be read at all: an empty file, and its MANIFEST entry
        (`entry`: container, previous, missing, detail) saying so. Blocking."""
        self.open(filename)
        self.logs[filename] = {**entry, "complete": False}

    def write_file(self, filename: str, data: bytes) -> None:
        handle = self.open(filename)
        try:
            handle.write(data)
        except OSError as exc:
            raise ArchiveError("write", f"cannot write {filename}: {exc}") from exc

    def reserve(self, nbytes: int = RESERVE_BYTES) -> None:
        """Room on the volume for what comes after the pod is asked to stop — the grace period's
        lines, prompt.txt, agent.json, MANIFEST.json —, taken (allocated and fsynced) before the
        pod is stopped and given back by :meth:`release` once it is: a full volume fails the cleanup
        while the pod, and the node's copy of its log, still exist (data first). Blocking."""
        path = self.tmp / RESERVE
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, nbytes)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise ArchiveError("not_writable", f"no room on the archive volume for {self.final}: {exc}") from exc

    def release(self) -> None:
        """Give the reserved room back (see :meth:`reserve`). Blocking."""
        (self.tmp / RESERVE).unlink(missing_ok=True)

    def commit(self) -> ArchiveResult:
        """Close, write MANIFEST.json last, make it all durable, rename into place, make the rename
        durable. Blocking."""
        try:
            self.release()
            entries: list[dict[str, Any]] = []
            for handle in self._handles.values():
                handle.flush()
                handle.close()
            for pattern in ("*" + STATE_SUFFIX + "*", "*" + SHIPPED_SUFFIX + "*"):
                for leftover in self.tmp.glob(pattern):
                    leftover.unlink()
            names = sorted(set(self._handles) | set(self.salvaged))
            for filename in self.salvaged:
                # Finished from what an earlier run had streamed, nothing more readable: whether
                # bytes are missing after them is not known.
                if filename not in self._handles:
                    self.logs.setdefault(filename, {"complete": False, "missing": "pod_gone"})
            for filename in names:
                entries.append({"name": filename, "size": (self.tmp / filename).stat().st_size,
                                "sha256": _sha256(self.tmp / filename), **self.logs.get(filename, {})})
            manifest = json.dumps({"files": entries}, indent=2, sort_keys=True).encode() + b"\n"
            with open(self.tmp / MANIFEST, "wb") as fh:
                fh.write(manifest)
            # The files, the manifest and the directory's entries, before the rename publishes them.
            self.archive.durable([self.tmp / n for n in names] + [self.tmp / MANIFEST], [self.tmp])
            if Archive.is_complete(self.final):
                self.abort()
                return self.archive.existing(self.final)
            if self.final.exists():  # an incomplete leftover of an older layout: replace it
                shutil.rmtree(self.final)
            os.rename(self.tmp, self.final)
            self.archive.durable([], [self.final.parent])
        except OSError as exc:
            self.close()      # kept: the next attempt finishes it (the captured logs exist nowhere else)
            raise ArchiveError("write", f"cannot finish archive {self.final}: {exc}") from exc
        files = [self.archive._rel(self.final / e["name"]) for e in entries] + [self.archive._rel(self.final / MANIFEST)]
        total = sum(int(e["size"]) for e in entries) + len(manifest)
        missing = [str(e.get("missing") or "") for e in entries if e.get("complete") is False]
        return ArchiveResult(self.final, files, total, logs_complete=not missing, missing=missing)

    def close(self) -> None:
        """Close the files but keep the partial directory (a later run may salvage it)."""
        for handle in self._handles.values():
            try:
                handle.close()
            except OSError:
                pass

    def abort(self) -> None:
        self.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def log_filename(container: str, previous: bool) -> str:
    if not is_dns_label(container):
        raise ArchiveError("invalid_name", f"invalid container name {container!r}")
    return f"{container}.previous.log" if previous else f"{container}.log"


def _check_filename(filename: str) -> None:
    if "/" in filename or filename in ("", ".", "..") or filename.startswith(".") or filename == MANIFEST:
        raise ArchiveError("invalid_name", f"invalid archive file name {filename!r}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
