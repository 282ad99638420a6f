"""JSON codec and timestamps of the devcluster API emulator (shared by the store, the strategies and the
HTTP layer)."""

from __future__ import annotations

import json
import time
from typing import Any

try:  # orjson is several times faster; the stdlib is the fallback
    import orjson as _orjson

    def dumps(obj: Any) -> bytes:
        """Compact JSON encoding (bytes). orjson stops at 254 levels of nesting, which the API server
        accepts: such objects (and only those) take the stdlib path."""
        try:
            return _orjson.dumps(obj)
        except _orjson.JSONEncodeError as exc:
            if "Recursion limit" not in str(exc):
                raise
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | str) -> Any:
        """JSON decoding."""
        return _orjson.loads(data)

except ImportError:  # pragma: no cover

    def dumps(obj: Any) -> bytes:
        """Compact JSON encoding (bytes)."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | str) -> Any:
        """JSON decoding."""
        return json.loads(data)



def clone(obj: Any) -> Any:
    """A deep copy of a JSON value (through the JSON codec: faster than copy.deepcopy)."""
    return loads(dumps(obj))


def now_rfc3339(t: float | None = None) -> str:
    """RFC 3339 timestamp with second precision, like metav1.Time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def parse_time(s: str) -> float | None:
    """Parse an RFC 3339 timestamp to epoch seconds (None if unparsable)."""
    import datetime as _dt

    try:
        return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None
