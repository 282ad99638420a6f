"""The archive writer: exactly-once, atomic archives of an agent's logs and final object.

Layout (SPEC §4): `<root>/<namespace>/<agent name>/<agent uid>/` holding `<container>.log`,
`<container>.previous.log`, `prompt.txt`, `agent.json` and, written last, `MANIFEST.json`.
Orphan pods go to `<root>/<namespace>/_orphans/<pod uid>/`.

Files are written into a temporary sibling directory, fsynced, then renamed into place. An archive
whose `MANIFEST.json` exists is complete and is never written again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .names import InvalidName, check_name, check_namespace, check_uid, is_dns_label

MANIFEST = "MANIFEST.json"
ORPHANS = "_orphans"
PARTIAL_MARK = ".partial-"


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


class Archive:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

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
        return ArchiveResult(directory, files, size, already_existed=True)

    def begin(self, directory: Path, salvage: bool = False) -> PendingArchive:
        """Create the temporary directory (this is also the writability check).

        A partial archive left by an interrupted run is discarded — or, with `salvage` (the pod and
        its logs are gone, so streaming again is impossible), its log files are kept and finished.
        """
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = directory.parent / f".{directory.name}{PARTIAL_MARK}{uuid.uuid4().hex[:8]}"
            stale = sorted(directory.parent.glob(f".{directory.name}{PARTIAL_MARK}*"),
                           key=lambda p: p.stat().st_mtime)
            salvaged: list[str] = []
            if salvage and stale:
                os.rename(stale.pop(), tmp)
                for leftover in tmp.iterdir():
                    if leftover.name.endswith(".log") and leftover.is_file():
                        salvaged.append(leftover.name)
                    else:
                        leftover.unlink()
            else:
                tmp.mkdir()
            for old in stale:
                shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise ArchiveError("not_writable", f"archive directory {directory.parent} is not writable: {exc}") from exc
        return PendingArchive(self, directory, tmp, salvaged=salvaged)

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()


@dataclass
class PendingArchive:
    archive: Archive
    final: Path
    tmp: Path
    salvaged: list[str] = field(default_factory=list)   # log files kept from an interrupted run
    _handles: dict[str, IO[bytes]] = field(default_factory=dict)

    def open(self, filename: str) -> IO[bytes]:
        """A binary file in the temporary directory (for streaming a log into it)."""
        _check_filename(filename)
        try:
            handle = open(self.tmp / filename, "wb", buffering=0)  # streamed bytes reach the file at once
        except OSError as exc:
            raise ArchiveError("write", f"cannot write {filename}: {exc}") from exc
        self._handles[filename] = handle
        return handle

    def write_file(self, filename: str, data: bytes) -> None:
        handle = self.open(filename)
        try:
            handle.write(data)
        except OSError as exc:
            raise ArchiveError("write", f"cannot write {filename}: {exc}") from exc

    def commit(self) -> ArchiveResult:
        """Close, write MANIFEST.json last, fsync everything, rename into place. Blocking."""
        try:
            entries: list[dict[str, Any]] = []
            for handle in self._handles.values():
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            for filename in sorted(set(self._handles) | set(self.salvaged)):
                if filename in self.salvaged and filename not in self._handles:
                    with open(self.tmp / filename, "rb") as fh:
                        os.fsync(fh.fileno())
                entries.append({"name": filename, "size": (self.tmp / filename).stat().st_size,
                                "sha256": _sha256(self.tmp / filename)})
            manifest = json.dumps({"files": entries}, indent=2, sort_keys=True).encode() + b"\n"
            with open(self.tmp / MANIFEST, "wb") as fh:
                fh.write(manifest)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(self.tmp)
            if Archive.is_complete(self.final):
                self.abort()
                return self.archive.existing(self.final)
            if self.final.exists():  # an incomplete leftover of an older layout: replace it
                shutil.rmtree(self.final)
            os.rename(self.tmp, self.final)
            _fsync_dir(self.final.parent)
        except OSError as exc:
            self.abort()
            raise ArchiveError("write", f"cannot finish archive {self.final}: {exc}") from exc
        files = [self.archive._rel(self.final / e["name"]) for e in entries] + [self.archive._rel(self.final / MANIFEST)]
        total = sum(int(e["size"]) for e in entries) + len(manifest)
        return ArchiveResult(self.final, files, total)

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
