"""Shipping the agent's output to the controller as it is written (``agentctl run``).

The controller archives an agent's log from the API, which serves only a container's current log
file and nothing once its node is lost. ``agentctl run`` sees every byte the agent writes, so it
also sends them, as they come, to the controller's ship endpoint; the controller writes them into
the agent's archive. Protocol (v1, the contract with ``controller/ship.py``):

* ``GET  {URL}?container=agent`` -> ``200 {"offset": N, "final": bool}``: the bytes the controller
  holds. A new process starts at 0: anything else means the stream cannot be exact (a restarted
  container) and nothing is shipped.
* ``POST {URL}?container=agent&offset=N`` with raw bytes (the combined stdout and stderr, as
  agentctl read them, one sequence) -> ``200 {"offset": M}``: M bytes are held; bytes below M are
  dropped from the spool. A retried request is never duplicated (the server skips what it has).
  ``409 {"offset": H}``: a gap, resend from H.
* ``POST ...&final=1`` (the last bytes, or none): everything the process tree wrote ends at
  ``N + len(body)`` -> ``200 {"offset": M, "final": true}``.
* 403, 410 (and other 4xx): stop shipping, one line on stderr; 5xx (503, 507 ...), 401,
  connection errors and timeouts: retry with backoff (0.5 s doubling to 5 s). 401 is retried
  because a kube-apiserver that just restarted can fail to verify a pod-bound token for a moment
  (seen in the chaos run on a real control plane), and the kubelet rotates the token file.

Authenticated with ``Authorization: Bearer`` and the projected token in
``AGENT_CONTROLLER_SHIP_TOKEN_FILE``, read again for every request (the kubelet rotates it); the
server is verified with the CA in ``AGENT_CONTROLLER_SHIP_CA`` (PEM; empty: the system's CAs).

:meth:`Shipper.put` only appends to an in-memory spool (bounded by ``AGENT_SHIP_SPOOL_BYTES``,
default 64 MiB) and never blocks on the network nor raises; one daemon thread does the requests.
Shipping never affects the agent: its output still passes through unchanged, and when the
controller cannot take it (unreachable, spool full, refused) shipping just stops — the controller
falls back to the log it reads from the API.

Standard library only.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

from controller.agentctl.supervise import env_number, say

ENV_URL = "AGENT_CONTROLLER_SHIP_URL"
ENV_CA = "AGENT_CONTROLLER_SHIP_CA"
ENV_TOKEN_FILE = "AGENT_CONTROLLER_SHIP_TOKEN_FILE"
ENV_SPOOL = "AGENT_SHIP_SPOOL_BYTES"
ENV_FLUSH = "AGENT_SHIP_FLUSH_SECONDS"

CONTAINER = "agent"
DEFAULT_SPOOL_BYTES = 64 * 1024 * 1024
DEFAULT_FLUSH_SECONDS = 300.0
"""How long the end may take to arrive once the agent's process tree is gone — the controller's
own wait for it (`cleanup.logTimeoutSeconds`, default 300) — past controller kills, a leader
failover and an API server restart: found too short at 10 s and at 60 s by the chaos run
(bench/chaos.py). The byte counts are reported first, so the controller knows what to wait for and
keeps the pod (and this process) until all of it arrived; a SIGTERM shortens it to the grace period."""
CLOSE_POLL_SECONDS = 0.5
CHUNK_BYTES = 1024 * 1024
"""The most bytes one request carries."""
REQUEST_TIMEOUT = 10.0
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 5.0
RETRIED_STATUSES = frozenset({401, 408, 429})
"""4xx answers that are retried like 5xx (every other 4xx but 409 stops shipping)."""


def _size(n: int) -> str:
    return f"{n} bytes" if n != 1 else "1 byte"


class _Transient(Exception):
    """A request failed in a way worth retrying."""


class Shipper:
    """Ships one ordered byte stream to the controller's ship endpoint; see the module docstring.

    ``put`` is called by the forwarding threads, ``close`` by the supervisor once the child has
    exited and its output is drained. Counters: ``shipped`` (bytes the controller acknowledged),
    ``lost`` (bytes put that will never be shipped: shipping stopped, or ``close`` ran out of
    time), ``final_acknowledged``.
    """

    def __init__(self, url: str, ca_pem: str = "", token_file: str = "",
                 spool_bytes: int = DEFAULT_SPOOL_BYTES, flush_seconds: float = DEFAULT_FLUSH_SECONDS) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._path = parts.path or "/"
        self._query = parts.query
        self._token_file = token_file
        self._context: ssl.SSLContext | None = None
        if self._https:  # made now: a CA that is not PEM is one line at the start, not endless retries
            self._context = (ssl.create_default_context(cadata=ca_pem) if ca_pem.strip()
                             else ssl.create_default_context())
        self.spool_bytes = spool_bytes
        self.flush_seconds = flush_seconds

        self._cond = threading.Condition(threading.Lock())
        self._spool = bytearray()
        self._base = 0
        """Offset of ``_spool[0]`` in the stream: every byte below it is acknowledged."""
        self._total = 0
        """Bytes put so far."""
        self._synced = False
        """The server's offset was read (GET) and is where this process starts: 0."""
        self._closing = False
        self._final = True
        """With ``_closing``: declare the end of the stream (``final=1``) once all is shipped."""
        self._stopped = False
        self._notes: list[str] = []
        """Lines for stderr, written by the shipping thread or ``close`` (never by ``put``'s caller)."""
        self._say_lock = threading.Lock()
        self.shipped = 0
        self.lost = 0
        self.final_acknowledged = False
        self.last_error = ""
        """The latest failure that was retried (for the line when ``close`` runs out of time)."""
        self._conn: http.client.HTTPConnection | None = None
        self._thread = threading.Thread(target=self._main, name="agentctl-ship", daemon=True)
        self._thread.start()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Shipper | None:
        """A started shipper when ``AGENT_CONTROLLER_SHIP_URL`` is set, else None (also when it is
        not a usable URL: one line on stderr)."""
        url = environ.get(ENV_URL, "").strip()
        if not url:
            return None
        spool = int(env_number(environ, ENV_SPOOL, DEFAULT_SPOOL_BYTES, 0, 2**62))
        flush = env_number(environ, ENV_FLUSH, DEFAULT_FLUSH_SECONDS, 0, 86400)
        try:
            return cls(url, ca_pem=environ.get(ENV_CA, ""), token_file=environ.get(ENV_TOKEN_FILE, "").strip(),
                       spool_bytes=spool, flush_seconds=flush)
        except (ValueError, ssl.SSLError) as exc:
            say(f"not shipping output to the controller: {ENV_URL}/{ENV_CA}: {' '.join(str(exc).split())}")
            return None

    # ------------------------------------------------------------------ the forwarders' side

    def put(self, data: bytes) -> None:
        """Append ``data`` to the stream; never blocks on the network, never raises."""
        if not data:
            return
        try:
            with self._cond:
                self._total += len(data)
                if self._stopped or self._closing:
                    self.lost += len(data)
                    return
                if len(self._spool) + len(data) > self.spool_bytes:
                    held = len(self._spool)
                    self._stop_locked(
                        f"not shipping output to the controller any more: its spool is full "
                        f"({ENV_SPOOL}={self.spool_bytes}); {_size(held + len(data))} could not be shipped, "
                        f"nor will what follows (the container log still has all of it)", count=len(data))
                    return
                self._spool += data
                self._cond.notify_all()
        except Exception:  # noqa: BLE001 - the agent's output must never depend on shipping
            pass

    # ------------------------------------------------------------------ the supervisor's side

    def close(self, timeout: float, final: bool = True,
              sooner: Callable[[], float | None] | None = None) -> bool:
        """Ship what is left and then (``final``) the end of the stream, waiting at most
        ``timeout`` seconds; True when the controller acknowledged the end. Afterwards nothing more
        is shipped (bytes still put are counted as lost). ``sooner``, asked every
        ``CLOSE_POLL_SECONDS`` while waiting, may bring the end forward (a monotonic time: the
        supervisor's grace period once a SIGTERM came)."""
        end = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._closing, self._final = True, final
            self._cond.notify_all()
            while not self._stopped and not self._done_locked():
                if sooner is not None:
                    with_signal = sooner()
                    if with_signal is not None and with_signal < end:
                        end, timeout = with_signal, max(0.0, with_signal - time.monotonic())
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(min(left, CLOSE_POLL_SECONDS) if sooner is not None else left)
            done = self.final_acknowledged or (not final and self._done_locked())
            if done:
                self._stopped = True
            elif not self._stopped:
                missing = len(self._spool)
                what = (f"{_size(missing)} not acknowledged" if missing
                        else "the end of it (final) not acknowledged")
                self._stop_locked(
                    f"could not ship all output to the controller within {timeout:g}s: {what}"
                    + (f" (last error: {self.last_error})" if self.last_error else ""))
            self._cond.notify_all()
        self._say_notes()
        return done and self.final_acknowledged

    def _done_locked(self) -> bool:
        if self._final:
            return self.final_acknowledged
        return self._synced and not self._spool

    def _stop_locked(self, line: str | None, count: int = 0) -> None:
        """Give up shipping for good (the lock is held): the spool is dropped and counted as lost."""
        if self._stopped:
            self.lost += count
            return
        self._stopped = True
        self.lost += len(self._spool) + count
        self._spool = bytearray()
        if line:
            self._notes.append(line)
        self._cond.notify_all()

    # ------------------------------------------------------------------ the shipping thread

    def _main(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # noqa: BLE001 - never take the supervisor down
            with self._cond:
                self._stop_locked(f"not shipping output to the controller any more: {type(exc).__name__}: {exc}")
        finally:
            self._say_notes()
            self._disconnect()

    def _say_notes(self) -> None:
        """Write the pending lines; when this returns, every line noted before is written."""
        with self._say_lock:
            with self._cond:
                notes, self._notes = self._notes, []
            for line in notes:
                say(line)

    def _loop(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            with self._cond:
                while not self._stopped and self._synced and not self._spool and not (
                        self._closing and self._final and not self.final_acknowledged):
                    self._cond.wait()
                if self._stopped:
                    return
                synced, offset = self._synced, self._base
                body = bytes(self._spool[:CHUNK_BYTES])
                final = self._closing and self._final and len(self._spool) <= CHUNK_BYTES
            try:
                if not synced:
                    status, answer = self._request("GET", self._target(), None)
                else:
                    status, answer = self._request("POST", self._target(offset, final), body)
            except _Transient as exc:
                with self._cond:
                    self.last_error = str(exc)
                if not self._pause(delay):
                    return
                delay = min(BACKOFF_MAX, delay * 2)
                continue
            if status >= 500:
                # A new connection for the retry: behind a Service it may reach another replica
                # (a standby answers 503; the leader takes the bytes).
                self._disconnect()
            with self._cond:
                if self._stopped:
                    return
                if not synced:
                    progressed = self._on_get(status, answer)
                else:
                    progressed = self._on_post(status, answer, offset, body, final)
            self._say_notes()
            if progressed:
                delay = BACKOFF_FIRST
            elif not self._pause(delay):
                return
            else:
                delay = min(BACKOFF_MAX, delay * 2)

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; False when shipping stopped meanwhile."""
        end = time.monotonic() + seconds
        with self._cond:
            while not self._stopped:
                left = end - time.monotonic()
                if left <= 0:
                    return True
                self._cond.wait(left)
            return False

    def _on_get(self, status: int, answer: dict[str, Any]) -> bool:
        """The server's offset at the start (the lock is held); True on progress."""
        if status != 200:
            return self._on_error(status, answer)
        offset = answer.get("offset")
        if not isinstance(offset, int) or isinstance(offset, bool):
            return False                     # a malformed answer: retried
        if offset != 0 or answer.get("final"):
            self._stop_locked(
                f"not shipping output to the controller: it already holds {_size(offset)} of this "
                f"container's output{' (final)' if answer.get('final') else ''}, and this process starts at 0")
            return True
        self._synced = True
        return True

    def _on_post(self, status: int, answer: dict[str, Any], offset: int, body: bytes, final: bool) -> bool:
        """Handle a POST's answer (the lock is held); True on progress."""
        held = answer.get("offset")
        if isinstance(held, bool) or not isinstance(held, int):
            held = None
        if status == 200:
            if held is None:
                return False                 # a malformed answer: retried
            if held > offset + len(body) or held > self._total:
                self._stop_locked(f"not shipping output to the controller any more: it says it holds "
                                  f"{_size(held)}, more than the {_size(offset + len(body))} sent")
                return True
            if not self._advance_locked(held):
                return True
            if final and held == self._total:
                if answer.get("final") is True:
                    self.final_acknowledged = True
                    self._cond.notify_all()
                    return True
                self._stop_locked("not shipping output to the controller any more: it did not take the end "
                                  "of the output (final)")
                return True
            return held > offset
        if status == 409:
            if held is None:
                self._stop_locked(f"not shipping output to the controller any more: it refused the bytes "
                                  f"at offset {offset} ({_message(answer) or 'conflict'})")
                return True
            if held > self._total:
                self._stop_locked(f"not shipping output to the controller any more: it says it holds "
                                  f"{_size(held)}, more than the {_size(self._total)} written")
                return True
            if not self._advance_locked(held):
                return True
            return held != offset
        return self._on_error(status, answer)

    def _advance_locked(self, held: int) -> bool:
        """The server holds ``held`` bytes: drop them from the spool. False (and shipping stopped)
        when it holds fewer than were already dropped: the stream cannot be exact any more."""
        if held < self._base:
            self._stop_locked(f"not shipping output to the controller any more: it now holds "
                              f"{_size(held)}, fewer than the {_size(self._base)} it had acknowledged")
            return False
        if held > self._base:
            del self._spool[:held - self._base]
            self.shipped += held - self._base
            self._base = held
            self._cond.notify_all()
        return True

    def _on_error(self, status: int, answer: dict[str, Any]) -> bool:
        """Any other answer (the lock is held): 5xx and a few 4xx are retried, the rest stop shipping."""
        if status >= 500 or status in RETRIED_STATUSES:
            return False
        why = {403: "this pod may not ship",
               410: "the archive is sealed"}.get(status, "refused")
        message = _message(answer)
        self._stop_locked(f"not shipping output to the controller any more: {why} (HTTP {status}"
                          + (f": {message}" if message else "") + ")")
        return True

    # ------------------------------------------------------------------ HTTP

    def _target(self, offset: int | None = None, final: bool = False) -> str:
        params = [("container", CONTAINER)]
        if offset is not None:
            params.append(("offset", str(offset)))
        if final:
            params.append(("final", "1"))
        query = urllib.parse.urlencode(params)
        return f"{self._path}?{self._query + '&' if self._query else ''}{query}"

    def _token(self) -> str | None:
        if not self._token_file:
            return None
        try:
            with open(self._token_file, encoding="utf-8") as f:
                token = f.read().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise _Transient(f"cannot read the token: {exc}") from exc
        if not token:
            raise _Transient("the token file is empty")
        return token

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        """The persistent connection, and whether it was used before."""
        if self._conn is not None:
            return self._conn, True
        if self._https:
            self._conn = http.client.HTTPSConnection(self._host, self._port, timeout=REQUEST_TIMEOUT,
                                                     context=self._context)
        else:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=REQUEST_TIMEOUT)
        return self._conn, False

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass

    def _request(self, method: str, target: str, body: bytes | None) -> tuple[int, dict[str, Any]]:
        """One request; its status and JSON answer ({} when there is none). Raises _Transient."""
        headers = {"Accept": "application/json"}
        token = self._token()
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                if response.will_close:
                    self._disconnect()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._disconnect()
                # A kept-alive connection the server closed meanwhile: once more at once, on a new one.
                if reused and attempt == 1 and isinstance(
                        exc, (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    continue
                raise _Transient(f"{type(exc).__name__}: {exc}") from exc
            try:
                answer = json.loads(raw) if raw else {}
            except ValueError:
                answer = {}
            return response.status, answer if isinstance(answer, dict) else {}
        raise _Transient("unreachable")  # pragma: no cover


def _message(answer: dict[str, Any]) -> str:
    message = answer.get("message")
    return " ".join(str(message).split())[:200] if message else ""
