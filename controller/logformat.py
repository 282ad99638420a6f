"""Reading a container log as the API serves it with `timestamps=true` (pure; unit-tested).

The controller always asks for timestamps: every line then starts with the RFC 3339 time the
runtime recorded it at, which lets a broken stream be resumed (`sinceTime`, whole seconds) without
a duplicated or a missing line, and tells the container's output apart from a text the kubelet
serves in its place (a garbage-collected container's log answers HTTP 200 with "unable to retrieve
container logs for containerd://…" — no timestamp). The prefix is stripped: the archive holds the
container's bytes as it wrote them.

`LogLines.feed()` returns the bytes to write; a line is only written once its newline arrived
(a stream that breaks mid-line is resumed from the line's start), except a line longer than
`MAX_PENDING`, which is written as it comes (a break inside it can then not be resumed exactly).
"""

from __future__ import annotations

import base64
import datetime
import re
from typing import Any

__all__ = ["KUBELET_TEXT", "LogLines", "format_since", "parse_timestamp"]

MAX_PENDING = 1 << 20

_TS = re.compile(rb"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d) ")

# What a kubelet serves in place of a log it no longer has (HTTP 200, no timestamp).
KUBELET_TEXT = re.compile(rb"^(unable to retrieve container logs for |failed to try resolving symlinks in path |"
                          rb"failed to get parse function|container .* not found|Error: |log file .* not found)")


def parse_timestamp(line: bytes) -> tuple[int, int] | None:
    """(nanoseconds since the epoch, length of the prefix incl. its space) of a served line, or None."""
    m = _TS.match(line)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    frac = (m.group(7) or b"").ljust(9, b"0")
    zone = m.group(8)
    try:
        when = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc)
    except ValueError:
        return None
    seconds = int(when.timestamp())
    if zone != b"Z":
        sign = 1 if zone[:1] == b"+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds * 1_000_000_000 + int(frac), m.end()


def format_since(ns: int) -> str:
    """`sinceTime` for a resume: the whole second the last line was written in (the API's precision)."""
    when = datetime.datetime.fromtimestamp(ns // 1_000_000_000, tz=datetime.timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class LogLines:
    """The state of one container log's capture across the streams that serve it."""

    def __init__(self) -> None:
        self.pending = bytearray()       # the current line, not yet complete (with its prefix)
        self.mid_line = False            # part of the current line was written already (long line)
        self.last_ts: int | None = None  # the newest line written
        self.same_ts = 0                 # lines written with exactly that timestamp
        self.skip: tuple[int, int] | None = None   # on a resume: (timestamp, lines with it to skip)
        self.first = True                # the next byte is the first of the current stream
        self.kubelet_text: bytes | None = None     # what the kubelet served instead of the log
        self.bytes = 0                   # content bytes handed out to be written
        self.gap = False                 # a resume did not find the last line read: bytes are missing
        self.held = b""                  # the incomplete last line of the previous stream (see eof)
        self.last_line = b""             # the newest complete line written, as served (with its prefix)

    # -- one stream

    def feed(self, chunk: bytes) -> bytes:
        """The bytes of `chunk` to write (container content, prefixes stripped)."""
        if self.kubelet_text is not None:
            self.kubelet_text += chunk[: 4096 - len(self.kubelet_text)]
            return b""
        out = bytearray()
        data = memoryview(chunk)
        start = 0
        while start < len(data):
            nl = chunk.find(b"\n", start)
            if nl < 0:
                self.pending += data[start:]
                break
            self.pending += data[start:nl + 1]
            start = nl + 1
            out += self._line(bytes(self.pending), complete=True)
            self.pending.clear()
            if self.kubelet_text is not None:
                self.kubelet_text += chunk[start:start + 4096]
                return bytes(out)
        if len(self.pending) > MAX_PENDING:
            out += self._line(bytes(self.pending), complete=False)
            self.pending.clear()
        return bytes(out)

    def eof(self) -> None:
        """A stream ended cleanly — which a kubelet connection cut short looks like too (kube-apiserver
        ends its answer as if complete): keep the incomplete last line aside and prepare to resume.
        Whether the log really ended, `is_end()` tells from its last line."""
        self.held = bytes(self.pending)
        self.pending.clear()
        self._restart()

    def is_end(self, tail: bytes) -> bool:
        """`tail`: the log's last line as served now (`tailLines=1`, timestamps). Is it the last one
        already read (or held)?"""
        if self.held:
            return tail == self.held
        if not tail:
            return self.last_ts is None
        return tail == self.last_line

    def finish(self) -> bytes:
        """Nothing more comes: a last line without a newline is the container's too."""
        held, self.held = self.held, b""
        return self._line(held, complete=True) if held else b""

    def broken(self) -> bool:
        """The stream broke: forget the incomplete line (the resume serves it again). False when a
        written part of a line would be duplicated — the capture can no longer be exact."""
        self.pending.clear()
        self.held = b""
        exact = not self.mid_line
        self._restart()
        return exact

    def _restart(self) -> None:
        self.first = True
        if self.last_ts is not None:
            self.skip = (self.last_ts, self.same_ts)

    def snapshot(self) -> dict[str, Any]:
        """What a later run needs to resume after the bytes written so far (see restore)."""
        return {"bytes": self.bytes, "lastTs": self.last_ts, "sameTs": self.same_ts, "midLine": self.mid_line,
                "lastLine": base64.b64encode(self.last_line).decode(), "gap": self.gap}

    @classmethod
    def restore(cls, state: dict[str, Any]) -> LogLines:
        lines = cls()
        lines.bytes = int(state.get("bytes") or 0)
        lines.last_ts = state.get("lastTs")
        lines.same_ts = int(state.get("sameTs") or 0)
        lines.mid_line = bool(state.get("midLine"))
        lines.gap = bool(state.get("gap"))
        lines.last_line = base64.b64decode(state.get("lastLine") or "")
        if lines.last_ts is not None:
            lines.skip = (lines.last_ts, lines.same_ts)
        return lines

    def resume_since(self) -> str | None:
        return format_since(self.last_ts) if self.last_ts is not None else None

    # -- lines

    def _line(self, line: bytes, complete: bool) -> bytes:
        if self.mid_line:
            # the rest of a long line: no prefix of its own
            if complete:
                self.mid_line = False
            self.bytes += len(line)
            return line
        parsed = parse_timestamp(line)
        if parsed is None:
            if self.first and KUBELET_TEXT.match(line):
                self.kubelet_text = line[:4096]
                return b""
            # Not a line as the runtime records them (should not happen): kept as it came.
            self.first = False
            self.bytes += len(line)
            return line
        self.first = False
        ts, prefix = parsed
        if self.skip is not None:
            skip_ts, count = self.skip
            if ts < skip_ts:
                return b""
            self.skip = None
            if ts == skip_ts and count > 0:
                if count > 1:
                    self.skip = (skip_ts, count - 1)
                return b""
            if count > 0:
                # A newer line before the last one read came round again: the log this stream serves
                # no longer holds it — rotated away, and whatever came between with it.
                self.gap = True
        if ts == self.last_ts:
            self.same_ts += 1
        else:
            self.last_ts, self.same_ts = ts, 1
        if complete:
            self.last_line = line
        else:
            self.mid_line = True
        content = line[prefix:]
        self.bytes += len(content)
        return content
