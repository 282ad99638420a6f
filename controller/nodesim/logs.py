"""Container log files as a kubelet with a CRI runtime (containerd) keeps them, and reading them.

A container's stdout and stderr go, line by line, into one log file in the CRI format::

    2026-12-01T10:00:00.123456789Z stdout F a complete line
    2026-12-01T10:00:00.123456999Z stderr P the first 16 KiB of a longer line

:class:`ContainerLog` is one container *instance* (a restart makes a new one). It keeps, in memory:

- the **entries** as the runtime writes them: a line is emitted when its newline arrives (``F``),
  when 16 KiB of it are pending (``P``, partial), or at the end of the stream (``P``); each entry
  has the time it was emitted (nanoseconds) and its stream;
- the **current file**: the entries since the last rotation. With a ``max_size`` the file is
  rotated when its size (CRI line overhead included, as on disk) reaches it — the kubelet's
  ``containerLogMaxSize`` — and only the current file is served, as a kubelet does;
- the **record** of everything the instance wrote (all entries across rotations, and the bytes in
  the order they were written), which tests compare archives with.

:func:`read_log` serves a log as the kubelet's ``/containerLogs`` does (``ReadLogs`` of
k8s.io/cri-client): ``tailLines`` counts CRI lines of the current file, ``sinceTime`` compares
entry timestamps, ``timestamps`` prefixes each line with its RFC 3339 time (fixed nine fraction
digits; the continuation of a partial line gets no prefix), ``limitBytes`` counts the prefixes too,
and ``follow`` streams until the instance ends. A follow stream meets a rotation in one of three
ways (:data:`FOLLOW_MODES`): ``stall`` — it delivers what the old file held and then nothing more,
ending only when the container exits (kubelets before kubernetes/kubernetes#115702 and still seen
in 1.29, #126564); ``end`` — the stream ends at the rotation; ``reopen`` — it goes on with the new
file (newer kubelets).
"""

from __future__ import annotations

import asyncio
import calendar
import time
from array import array
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

__all__ = [
    "CRI_OVERHEAD",
    "FOLLOW_MODES",
    "MAX_LINE",
    "STDERR",
    "STDOUT",
    "ContainerLog",
    "LogQuery",
    "format_ts",
    "parse_rfc3339_ns",
    "read_log",
]

STDOUT = 0
STDERR = 1
_PARTIAL = 2
MAX_LINE = 16 * 1024
"""containerd's ``max_container_log_line_size``: longer lines are split into partial entries."""
CRI_OVERHEAD = len("2006-01-02T15:04:05.000000000Z stdout F ")
"""Bytes a CRI log line adds to its content on disk (a partial one adds its newline as well)."""
FOLLOW_MODES = ("stall", "end", "reopen")
CHUNK = 64 * 1024


def format_ts(ns: int) -> str:
    """RFC 3339 with exactly nine fraction digits, UTC (the kubelet's ``RFC3339NanoFixed``)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def parse_rfc3339_ns(text: str) -> int | None:
    """Nanoseconds since the epoch of an RFC 3339 time (any fraction, ``Z`` or an offset); None if invalid."""
    s = text.strip()
    try:
        date, rest = s.split("T", 1)
        y, mo, d = (int(x) for x in date.split("-"))
        offset = 0
        if rest.endswith(("Z", "z")):
            clock = rest[:-1]
        else:
            sign_at = max(rest.rfind("+"), rest.rfind("-"))
            if sign_at < 0:
                return None
            clock, off = rest[:sign_at], rest[sign_at:]
            oh, om = off[1:].split(":")
            offset = (int(oh) * 3600 + int(om) * 60) * (1 if off[0] == "+" else -1)
        frac_ns = 0
        if "." in clock:
            clock, frac = clock.split(".", 1)
            if not frac.isdigit():
                return None
            frac_ns = int((frac + "000000000")[:9])
        h, mi, sec = (int(x) for x in clock.split(":"))
        secs = calendar.timegm((y, mo, d, h, mi, sec, 0, 0, 0)) - offset
    except (ValueError, IndexError):
        return None
    return secs * 1_000_000_000 + frac_ns


class ContainerLog:
    """The log of one container instance (see the module docstring). Use it on one event loop."""

    __slots__ = (
        "_changed",
        "_last_ts",
        "data",
        "done",
        "ends",
        "file_entry",
        "file_size",
        "flags",
        "max_line",
        "max_size",
        "pending",
        "rotations",
        "streams_used",
        "tss",
        "written",
    )

    def __init__(self, max_size: int | None = None, max_line: int = MAX_LINE) -> None:
        self.data = bytearray()          # the content of every entry, in order (all files)
        self.ends = array("q")           # end offset in `data` of each entry
        self.tss = array("q")            # timestamp (ns) of each entry
        self.flags = bytearray()         # stream | _PARTIAL of each entry
        self.rotations: list[int] = []   # entry index at which each rotated-to file starts
        self.file_entry = 0              # first entry of the current file
        self.file_size = 0               # bytes of the current file as on disk
        self.max_size = max_size if max_size and max_size > 0 else None
        self.max_line = max_line
        self.pending: list[bytearray | None] = [None, None]
        self.written: bytearray | None = None   # write order, kept once both streams were used
        self.streams_used = 0
        self.done = False
        self._changed: asyncio.Event | None = None
        self._last_ts = 0

    # ------------------------------------------------------------------ writing

    def write(self, stream: int, data: bytes | bytearray | memoryview) -> None:
        """The container wrote ``data`` to ``stream`` (STDOUT/STDERR)."""
        if self.done or not data:
            return
        if isinstance(data, memoryview):
            data = bytes(data)
        bit = 1 << stream
        if self.streams_used and not self.streams_used & bit and self.written is None:
            other = self.pending[1 - stream]
            self.written = bytearray(self.data)
            if other:
                self.written += other
        self.streams_used |= bit
        if self.written is not None:
            self.written += data
        now = time.time_ns()
        if now < self._last_ts:
            now = self._last_ts
        self._last_ts = now
        buf = self.pending[stream]
        if buf is not None:
            buf += data
            work: bytes | bytearray = buf
        else:
            work = data
        mv = memoryview(work)
        n = len(mv)
        start = 0
        max_line = self.max_line
        find = work.find
        while start < n:
            nl = find(b"\n", start, min(n, start + max_line))
            if nl >= 0:
                self._emit(stream, mv[start : nl + 1], False, now)
                start = nl + 1
            elif n - start >= max_line:
                self._emit(stream, mv[start : start + max_line], True, now)
                start += max_line
            else:
                break
        rest = bytearray(mv[start:]) if start < n else None
        mv.release()
        self.pending[stream] = rest
        self._notify()

    def _emit(self, stream: int, content: memoryview | bytes, partial: bool, ts: int) -> None:
        self.data += content
        self.ends.append(len(self.data))
        self.tss.append(ts)
        self.flags.append(stream | (_PARTIAL if partial else 0))
        self.file_size += CRI_OVERHEAD + len(content) + (1 if partial else 0)
        if self.max_size is not None and self.file_size >= self.max_size:
            self.rotations.append(len(self.ends))
            self.file_entry = len(self.ends)
            self.file_size = 0

    def close(self) -> None:
        """The instance ended: pending partial lines are written out (``P``) and followers end."""
        if self.done:
            return
        now = max(time.time_ns(), self._last_ts)
        for s in (STDOUT, STDERR):
            rest = self.pending[s]
            if rest:
                self._emit(s, bytes(rest), True, now)
            self.pending[s] = None
        self.done = True
        self._notify()

    def poke(self) -> None:
        """Wake followers (they re-check whatever stops them, e.g. a lost node)."""
        self._notify()

    def _notify(self) -> None:
        ev = self._changed
        if ev is not None:
            self._changed = None
            ev.set()

    async def changed(self) -> None:
        """Wait for the next write, rotation, end or poke."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    # ------------------------------------------------------------------ reading

    def start_of(self, i: int) -> int:
        """Offset in :attr:`data` where entry ``i`` starts."""
        return self.ends[i - 1] if i > 0 else 0

    def content(self) -> bytes:
        """Every entry's content across all files (what a reader that missed nothing gets), plus any
        line still pending."""
        out = bytes(self.data)
        for s in (STDOUT, STDERR):
            rest = self.pending[s]
            if rest:
                out += bytes(rest)
        return out

    def written_output(self) -> bytes:
        """The bytes the container wrote, stdout and stderr in the order written."""
        if self.written is not None:
            return bytes(self.written)
        return self.content()

    def stream_output(self, stream: int) -> bytes:
        """What the container wrote to one stream."""
        parts = bytearray()
        data, ends, flags = self.data, self.ends, self.flags
        prev = 0
        for i in range(len(ends)):
            end = ends[i]
            if flags[i] & 1 == stream:
                parts += data[prev:end]
            prev = end
        rest = self.pending[stream]
        if rest:
            parts += rest
        return bytes(parts)

    def current_file(self) -> bytes:
        """The content of the current log file (what the kubelet serves)."""
        return bytes(self.data[self.start_of(self.file_entry) :])

    @property
    def size(self) -> int:
        """Bytes of content written so far (all files, pending lines excluded)."""
        return len(self.data)


@dataclass
class LogQuery:
    """The ``PodLogOptions`` a kubelet acts on."""

    follow: bool = False
    timestamps: bool = False
    since_ns: int | None = None
    tail_lines: int | None = None
    limit_bytes: int | None = None
    stream: str = "All"     # All / Stdout / Stderr

    def wants(self, flag: int) -> bool:
        if self.stream == "All":
            return True
        return (flag & 1) == (STDOUT if self.stream == "Stdout" else STDERR)


async def read_log(
    log: ContainerLog,
    q: LogQuery,
    *,
    at_rotation: str = "stall",
    stalled: Callable[[], bool] | None = None,
) -> AsyncIterator[bytes]:
    """Yield the log as the kubelet serves it (see the module docstring).

    ``stalled()`` (optional) is checked on every wake-up: when it returns True the stream delivers
    nothing more and never ends by itself (a lost node) — the caller's disconnect ends it.
    """
    lo = log.file_entry
    hi = len(log.ends)
    if q.tail_lines is not None:
        lo = max(lo, hi - max(0, q.tail_lines))
    remain = q.limit_bytes if q.limit_bytes is not None else -1
    simple = not q.timestamps and q.since_ns is None and q.stream == "All"
    new_line = True
    pos = lo
    my_file = len(log.rotations)    # the file the reader opened (the current one)
    if not q.follow:
        end = hi
        if simple:
            start = log.start_of(lo)
            stop = log.start_of(end)
            if remain >= 0:
                stop = min(stop, start + remain)
            mv = memoryview(log.data)
            try:
                for off in range(start, stop, CHUNK):
                    yield bytes(mv[off : min(stop, off + CHUNK)])
            finally:
                mv.release()
            return
        async for chunk in _entries(log, q, pos, end, remain, new_line):
            yield chunk
        return
    while True:
        if stalled is not None and stalled():
            while True:
                await log.changed()
        hi = len(log.ends)
        limit_end = None
        if at_rotation != "reopen" and len(log.rotations) > my_file:
            limit_end = log.rotations[my_file]
        end = hi if limit_end is None else min(hi, limit_end)
        if pos < end:
            out = bytearray()
            if simple:
                start, stop = log.start_of(pos), log.start_of(end)
                if remain >= 0 and stop - start > remain:
                    stop = start + remain
                out += log.data[start:stop]
                pos = end
            else:
                while pos < end and len(out) < CHUNK:
                    piece, new_line = _render(log, q, pos, new_line)
                    out += piece
                    pos += 1
            if remain >= 0:
                if len(out) >= remain:
                    yield bytes(out[:remain])
                    return
                remain -= len(out)
            if out:
                yield bytes(out)
            continue
        if limit_end is not None and pos >= limit_end:
            # the file this reader had open was rotated away
            if at_rotation == "end":
                return
            while not log.done:            # "stall": nothing more, until the container exits
                if stalled is not None and stalled():
                    break
                await log.changed()
            if log.done:
                return
            continue
        if log.done:
            return
        await log.changed()


def _render(log: ContainerLog, q: LogQuery, i: int, new_line: bool) -> tuple[bytes, bool]:
    """Entry ``i`` as served (empty when filtered out) and whether the next one starts a line."""
    flag = log.flags[i]
    content = log.data[log.start_of(i) : log.ends[i]]
    nxt = not flag & _PARTIAL
    if q.since_ns is not None and log.tss[i] < q.since_ns:
        return b"", nxt
    if not q.wants(flag):
        return b"", nxt
    if q.timestamps and new_line:
        return format_ts(log.tss[i]).encode() + b" " + bytes(content), nxt
    return bytes(content), nxt


async def _entries(
    log: ContainerLog, q: LogQuery, pos: int, end: int, remain: int, new_line: bool
) -> AsyncIterator[bytes]:
    out = bytearray()
    while pos < end:
        piece, new_line = _render(log, q, pos, new_line)
        pos += 1
        if remain >= 0 and len(out) + len(piece) >= remain:
            out += piece[: remain - len(out)]
            yield bytes(out)
            return
        out += piece
        if len(out) >= CHUNK:
            yield bytes(out)
            out = bytearray()
    if out:
        yield bytes(out)
