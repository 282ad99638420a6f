"""Fault injection: one API for the emulator and for the fault proxy in front of a real API server
(controller/controlplane/proxy.py), so a test or the chaos run injects the same faults on both.

``faults.inject(verb=..., resource=..., namespace=..., name=..., ...)`` arms a fault; a request
matches when every given field equals the request's (``resource`` may name a subresource:
"agents/status", "pods/log"). What a matching request gets:

- ``status``: an error answered as a Kubernetes ``Status`` (429 and 503 with ``Retry-After``);
- ``hang``: held until :meth:`Faults.clear` (then answered, or failed with ``status``);
- ``delay``: held that many seconds first;
- ``cut_after``: (fault proxy only) the response's body is cut after that many bytes and the
  connection dropped, as a broken watch or log stream is;
- ``probability``: the share of matching requests it applies to, drawn from the seeded
  :attr:`Faults.rng` (chaos runs); ``times`` bounds how many it affects (None: no bound).
"""

from __future__ import annotations

import asyncio
import random
import threading
from dataclasses import dataclass
from typing import Any

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Gone",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(eq=False)
class Fault:
    """One injected fault; ``hits`` counts the requests it affected."""

    verb: str | None = None
    resource: str | None = None
    namespace: str | None = None
    name: str | None = None
    status: int | None = 500
    times: int | None = 1
    hang: bool = False
    delay: float = 0.0
    message: str | None = None
    cut_after: int | None = None
    retry_after: int = 1
    probability: float = 1.0
    hits: int = 0
    cleared: bool = False

    def matches(self, verb: str, resource: str, ns: str, name: str) -> bool:
        """Whether this fault applies to the request (before its probability is drawn)."""
        if self.cleared or (self.times is not None and self.hits >= self.times):
            return False
        if self.verb is not None and self.verb != verb:
            return False
        if self.resource is not None and self.resource != resource:
            return False
        if self.namespace is not None and self.namespace != ns:
            return False
        if self.name is not None and self.name != name:
            return False
        return True

    async def wait(self) -> None:
        """Hold the request as the fault says (``delay``, then ``hang`` until cleared)."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.hang:
            while not self.cleared:
                await asyncio.sleep(0.05)

    def answer(self) -> tuple[int, str, str, dict[str, Any], dict[str, str] | None]:
        """(code, reason, message, details, headers) of the error a ``status`` fault answers."""
        code = self.status or 500
        reason = REASONS.get(code, "InternalError")
        message = self.message or f"injected fault: {reason}"
        if code in (429, 503):
            return code, reason, message, {"retryAfterSeconds": self.retry_after}, {"Retry-After": str(self.retry_after)}
        return code, reason, message, {}, None

    def status_body(self) -> dict[str, Any]:
        """The ``Status`` object of :meth:`answer`, as the API server writes it."""
        code, reason, message, details, _ = self.answer()
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": message, "reason": reason, "code": code}
        if details:
            body["details"] = details
        return body


class Faults:
    """The armed faults; ``inject(...)`` makes matching requests fail, hang, slow down or break."""

    def __init__(self, seed: int | None = None) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self.rng = random.Random(seed)

    def inject(
        self,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
        status: int | None = None,
        times: int | None = 1,
        hang: bool = False,
        delay: float = 0,
        message: str | None = None,
        cut_after: int | None = None,
        retry_after: int = 1,
        probability: float = 1.0,
    ) -> Fault:
        """Add a fault (see the module docstring).

        ``status`` defaults to 500; with ``hang``, ``delay`` or ``cut_after`` and no explicit
        ``status`` the request is held (until :meth:`clear`, resp. ``delay`` seconds), or cut, and
        otherwise served normally. ``times=None`` means every matching request.
        """
        if status is None and not hang and not delay and cut_after is None:
            status = 500
        f = Fault(verb, resource, namespace, name, status, times, hang, float(delay), message,
                  cut_after, int(retry_after), float(probability))
        with self._lock:
            self._faults.append(f)
        return f

    def clear(self) -> None:
        """Remove every fault and release hanging requests."""
        with self._lock:
            for f in self._faults:
                f.cleared = True
            self._faults.clear()

    def remove(self, fault: Fault) -> None:
        """Disarm one fault (releasing what it holds)."""
        with self._lock:
            fault.cleared = True
            if fault in self._faults:
                self._faults.remove(fault)

    def active(self) -> list[Fault]:
        """The faults still armed."""
        with self._lock:
            return [f for f in self._faults if not f.cleared and (f.times is None or f.hits < f.times)]

    def take(self, verb: str, resource: str, ns: str, name: str) -> Fault | None:
        """The first matching fault whose probability is drawn (its hit is counted)."""
        if not self._faults:
            return None
        with self._lock:
            for f in self._faults:
                if f.matches(verb, resource, ns, name) and (f.probability >= 1.0 or self.rng.random() < f.probability):
                    f.hits += 1
                    return f
        return None
