"""``agentctl run`` ships the agent's output to the controller (``controller.agentctl.ship``).

Against :class:`ShipServer`, a small stand-in for the controller's ship endpoint that implements
protocol v1 (GET the held offset; POST at an offset, a retried request's bytes below the held size
skipped, 409 on a gap; ``final=1``; 410 once sealed) and can be told to fail: 5xx, connections
dropped before or after the bytes were taken, 409s, 410, forgetting what it held. Over plain HTTP
and over HTTPS with a test CA. No timed assertions: conditions are waited for with generous
failsafe timeouts.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from agentctl_helpers import DEADLINE, REPO, agentctl, clean_env, write_kubeconfig
from fakeapi import FakeAPI, TestPKI

from controller.agentctl import ship
from controller.agentctl.ship import Shipper

PY = sys.executable
MiB = 1024 * 1024


class ShipServer:
    """The controller's ship endpoint, in a thread; ``plan`` holds the answers of the next requests
    (``"ok"``: as the protocol says; ``"500"``/``"503"``/``"507"``/``"410"``: that status, nothing
    taken; ``"drop"``: the connection is closed without an answer, nothing taken; ``"drop-after"``:
    the bytes are taken, then the connection is closed without an answer; ``"409-ahead"``: the bytes
    are taken, the answer is a 409 with the new size; ``"forget"``: what is held is lost, then the
    request is handled). ``always``: the answer once the plan is used up."""

    def __init__(self, tls: ssl.SSLContext | None = None, tokens: set[str] | None = None) -> None:
        self.data = bytearray()
        self.final = False
        self.sealed = False
        self.tokens = tokens
        """Accepted bearer tokens (None: no check)."""
        self.plan: list[str] = []
        self.always = "ok"
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                with server.changed:
                    action = server.plan.pop(0) if server.plan else server.always
                    server.requests.append({
                        "method": method, "path": url.path, "query": query, "length": len(body),
                        "auth": self.headers.get("Authorization"), "type": self.headers.get("Content-Type"),
                        "action": action, "at": time.monotonic()})
                    answer = self._answer(method, action, query, body)
                    server.changed.notify_all()
                if answer is None:
                    self.close_connection = True
                    return
                self._send(*answer)

            def _answer(self, method: str, action: str, query: dict[str, str],
                        body: bytes) -> tuple[int, dict[str, Any]] | None:
                if server.tokens is not None:
                    auth = self.headers.get("Authorization", "")
                    if not auth.startswith("Bearer ") or auth[7:] not in server.tokens:
                        return 401, {"message": "a bearer token is required"}
                if action == "drop":
                    return None
                if action.isdigit():
                    return int(action), {"message": f"injected {action}"}
                if action == "forget":
                    del server.data[:]
                if query.get("container") != "agent":
                    return 403, {"message": "only the agent container"}
                if server.sealed:
                    return 410, {"message": "sealed"}
                if method == "GET":
                    return 200, {"offset": len(server.data), "final": server.final}
                offset = int(query["offset"])
                size = len(server.data)
                if offset > size:
                    return 409, {"offset": size, "message": "a gap: resend from offset"}
                data = body[size - offset:]
                if data and server.final:
                    return 409, {"message": "all of this log had arrived already (final)"}
                server.data += data
                if query.get("final") in ("1", "true") and not server.final:
                    if offset + len(body) != len(server.data):
                        return 409, {"offset": len(server.data), "message": "final: bytes are missing"}
                    server.final = True
                if action == "drop-after":
                    return None
                if action == "409-ahead":
                    return 409, {"offset": len(server.data)}
                return 200, {"offset": len(server.data), "final": server.final}

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/v1/ship"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, predicate: Callable[[ShipServer], bool], timeout: float = DEADLINE) -> None:
        end = time.monotonic() + timeout
        with self.changed:
            while not predicate(self):
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met within {timeout}s; requests={self.requests[-5:]}")
                self.changed.wait(min(left, 0.5))

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[ShipServer]:
    s = ShipServer()
    yield s
    s.stop()


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries sooner than 0.5 s .. 5 s, so that tests with many injected failures stay quick."""
    monkeypatch.setattr(ship, "BACKOFF_FIRST", 0.02)
    monkeypatch.setattr(ship, "BACKOFF_MAX", 0.1)


@pytest.fixture
def shippers() -> Iterator[list[Shipper]]:
    """Shippers made by a test: stopped at teardown."""
    made: list[Shipper] = []
    yield made
    for s in made:
        s.close(0)


def wait_until(predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.01)


def chunks(total: int, seed: int = 1) -> list[bytes]:
    """Random binary chunks of forwarder-like sizes (1 byte .. 64 KiB), ``total`` bytes in all."""
    rng = random.Random(seed)
    out, left = [], total
    while left:
        n = min(left, rng.choice((1, 7, 100, 4096, 65536, rng.randint(1, 65536))))
        out.append(rng.randbytes(n))
        left -= n
    return out


def agentctl_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("agentctl:")]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again: connections are refused


# ------------------------------------------------------------------ from the environment


def test_from_env_only_with_a_url(capfd: pytest.CaptureFixture[str], server: ShipServer,
                                  shippers: list[Shipper]) -> None:
    assert Shipper.from_env({}) is None
    assert Shipper.from_env({"AGENT_CONTROLLER_SHIP_URL": "  "}) is None
    s = Shipper.from_env({"AGENT_CONTROLLER_SHIP_URL": server.url})
    assert s is not None
    shippers.append(s)
    assert (s.spool_bytes, s.flush_seconds) == (64 * MiB, 300.0)
    s2 = Shipper.from_env({"AGENT_CONTROLLER_SHIP_URL": server.url, "AGENT_SHIP_SPOOL_BYTES": "1000",
                           "AGENT_SHIP_FLUSH_SECONDS": "2.5"})
    assert s2 is not None
    shippers.append(s2)
    assert (s2.spool_bytes, s2.flush_seconds) == (1000, 2.5)
    assert capfd.readouterr().err == ""
    s3 = Shipper.from_env({"AGENT_CONTROLLER_SHIP_URL": server.url, "AGENT_SHIP_SPOOL_BYTES": "lots"})
    assert s3 is not None
    shippers.append(s3)
    assert s3.spool_bytes == 64 * MiB
    assert capfd.readouterr().err == "agentctl: ignoring invalid AGENT_SHIP_SPOOL_BYTES='lots'; using 67108864\n"


def test_from_env_with_an_unusable_url_or_ca_is_one_line(capfd: pytest.CaptureFixture[str]) -> None:
    assert Shipper.from_env({"AGENT_CONTROLLER_SHIP_URL": "ftp://example/x"}) is None
    assert Shipper.from_env({"AGENT_CONTROLLER_SHIP_URL": "https://127.0.0.1:1/v1/ship",
                             "AGENT_CONTROLLER_SHIP_CA": "not a PEM"}) is None
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("agentctl: not shipping output") for line in lines), lines


def test_ship_uses_the_standard_library_only() -> None:
    """Imported with the controller's dependencies blocked, it pulls in nothing else of ``controller``."""
    code = (
        "import sys\n"
        "class Blocked:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('kopf', 'kubernetes', 'aiohttp', 'psutil', 'prometheus_client', 'yaml'):\n"
        "            raise ImportError('blocked for this test: ' + name)\n"
        "sys.meta_path.insert(0, Blocked())\n"
        "import controller.agentctl.ship\n"
        "print(sorted(m for m in sys.modules if m.startswith('controller')))\n"
    )
    r = subprocess.run([PY, "-c", code], env=clean_env(), cwd=REPO, capture_output=True, timeout=DEADLINE,
                       check=False)
    assert r.returncode == 0, r.stderr
    # (and of agentctl only what it shares with the supervisor: say, env_number)
    assert r.stdout.decode().strip() == str(["controller", "controller.agentctl", "controller.agentctl.ship",
                                             "controller.agentctl.supervise"])


# ------------------------------------------------------------------ exactly once, in order


def test_bytes_arrive_exactly_once_and_in_order_across_failures(
        server: ShipServer, fast_backoff: None, shippers: list[Shipper], capfd: pytest.CaptureFixture[str]) -> None:
    server.plan = ["500", "drop", "ok", "503", "ok", "drop-after", "ok", "507", "drop", "409-ahead", "ok",
                   "drop-after", "drop-after", "500", "ok", "409-ahead", "drop"] + ["ok", "drop-after"] * 5
    s = Shipper(server.url)
    shippers.append(s)
    put = chunks(5 * MiB)
    total = 0
    for i, c in enumerate(put):
        s.put(c)
        total += len(c)
        if i % 4 == 0:  # in bursts: many requests, so that every injected failure is met
            wait_until(lambda: s.shipped == total)
    expected = b"".join(put)
    assert s.close(DEADLINE) is True
    assert bytes(server.data) == expected
    assert server.final is True
    assert (s.shipped, s.lost, s.final_acknowledged) == (len(expected), 0, True)
    posts = server.posts()
    assert max(p["length"] for p in posts) <= MiB
    assert all(p["type"] == "application/octet-stream" for p in posts)
    assert server.requests[0]["method"] == "GET" and server.requests[0]["query"] == {"container": "agent"}
    assert not server.plan, "every injected failure was met"
    assert capfd.readouterr().err == ""  # retried failures say nothing


def test_final_carries_the_total_and_comes_last(server: ShipServer, shippers: list[Shipper]) -> None:
    s = Shipper(server.url)
    shippers.append(s)
    s.put(b"hello ")
    s.put(b"world\n")
    assert s.close(DEADLINE) is True
    finals = [p for p in server.posts() if p["query"].get("final") == "1"]
    assert len(finals) == 1 and finals[0] is server.posts()[-1]
    assert int(finals[0]["query"]["offset"]) + finals[0]["length"] == 12
    assert bytes(server.data) == b"hello world\n" and server.final


def test_nothing_written_still_sends_final_at_zero(server: ShipServer, shippers: list[Shipper]) -> None:
    s = Shipper(server.url)
    shippers.append(s)
    assert s.close(DEADLINE) is True
    (final,) = server.posts()
    assert final["query"] == {"container": "agent", "offset": "0", "final": "1"} and final["length"] == 0
    assert server.final and s.shipped == 0


def test_final_after_a_failed_final_is_sent_again(server: ShipServer, fast_backoff: None,
                                                  shippers: list[Shipper]) -> None:
    s = Shipper(server.url)
    shippers.append(s)
    s.put(b"x" * 1000)
    server.wait(lambda sv: len(sv.data) == 1000)
    wait_until(lambda: s.shipped == 1000)
    server.plan = ["503", "drop", "drop-after"]
    assert s.close(DEADLINE) is True
    assert server.final and bytes(server.data) == b"x" * 1000


def test_more_than_one_request_before_final(server: ShipServer, fast_backoff: None,
                                            shippers: list[Shipper]) -> None:
    """What is left at close (more than one request's worth) is sent first, then final."""
    server.plan = ["503"] * 3  # holds back the start a little, so the spool fills up
    s = Shipper(server.url)
    shippers.append(s)
    data = os.urandom(3 * MiB + 5)
    s.put(data)
    assert s.close(DEADLINE) is True
    assert bytes(server.data) == data
    assert [p["query"].get("final") for p in server.posts()][-1] == "1"


# ------------------------------------------------------------------ the token


def test_the_token_is_read_for_every_request(server: ShipServer, tmp_path: Path, fast_backoff: None,
                                             shippers: list[Shipper]) -> None:
    token = tmp_path / "token"          # missing at first: retried until it appears
    server.tokens = {"t1", "t2"}
    s = Shipper(server.url, token_file=str(token))
    shippers.append(s)
    s.put(b"one ")
    time.sleep(0.1)
    assert server.requests == []
    token.write_text("t1\n")
    server.wait(lambda sv: bytes(sv.data) == b"one ")
    token.write_text("t2")              # the kubelet rotated it
    s.put(b"two")
    assert s.close(DEADLINE) is True
    assert bytes(server.data) == b"one two"
    auths = [r["auth"] for r in server.requests]
    assert auths[0] == "Bearer t1" and auths[-1] == "Bearer t2"


def test_a_rejected_token_is_retried_until_the_rotated_one_is_taken(
        server: ShipServer, tmp_path: Path, shippers: list[Shipper], capfd: pytest.CaptureFixture[str]) -> None:
    """401 is not the end: a kube-apiserver that just restarted can refuse a good pod-bound token
    for a moment, and the kubelet rotates the token file."""
    token = tmp_path / "token"
    token.write_text("wrong")
    server.tokens = {"right"}
    s = Shipper(server.url, token_file=str(token))
    shippers.append(s)
    s.put(b"abc")
    deadline = time.monotonic() + DEADLINE
    while sum(1 for r in server.requests if r["auth"] == "Bearer wrong") < 2:
        assert time.monotonic() < deadline, "retried with the same token"
        time.sleep(0.05)
    token.write_text("right")
    assert s.close(DEADLINE) is True
    assert (s.shipped, s.lost) == (3, 0) and bytes(server.data) == b"abc"
    assert capfd.readouterr().err == ""


# ------------------------------------------------------------------ stopping


def test_410_stops_shipping_for_good(server: ShipServer, shippers: list[Shipper],
                                     capfd: pytest.CaptureFixture[str]) -> None:
    s = Shipper(server.url)
    shippers.append(s)
    s.put(b"a" * 100)
    server.wait(lambda sv: len(sv.data) == 100)
    wait_until(lambda: s.shipped == 100)
    server.sealed = True
    s.put(b"b" * 50)
    wait_until(lambda: s.lost == 50)
    count = len(server.requests)
    for _ in range(100):
        s.put(b"c" * 10)               # still never blocks or raises
    assert s.close(DEADLINE) is False
    assert (s.shipped, s.lost, s.final_acknowledged) == (100, 50 + 1000, False)
    assert len(server.requests) == count, "nothing more was sent"
    assert bytes(server.data) == b"a" * 100 and not server.final
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("agentctl: not shipping output to the controller any more: the archive is sealed "
                               "(HTTP 410"), lines


def test_a_server_that_lost_acknowledged_bytes_stops_shipping(
        server: ShipServer, shippers: list[Shipper], capfd: pytest.CaptureFixture[str]) -> None:
    s = Shipper(server.url)
    shippers.append(s)
    s.put(b"a" * 100)
    wait_until(lambda: s.shipped == 100)
    server.plan = ["forget"]           # -> 409 {"offset": 0}: below what was acknowledged
    s.put(b"b" * 10)
    assert s.close(DEADLINE) is False
    assert (s.shipped, s.lost) == (100, 10)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and "fewer than the 100 bytes it had acknowledged" in lines[0], lines


def test_a_server_that_already_holds_bytes_at_the_start_is_not_shipped_to(
        server: ShipServer, shippers: list[Shipper], capfd: pytest.CaptureFixture[str]) -> None:
    server.data += b"from an earlier container"
    s = Shipper(server.url)
    shippers.append(s)
    s.put(b"new")
    assert s.close(DEADLINE) is False
    assert server.posts() == [] and bytes(server.data) == b"from an earlier container"
    assert (s.shipped, s.lost) == (0, 3)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and "it already holds 25 bytes" in lines[0], lines


def test_the_spool_bound_gives_up_shipping_and_counts_the_loss(
        server: ShipServer, shippers: list[Shipper], capfd: pytest.CaptureFixture[str]) -> None:
    server.always = "503"              # the controller is not ready: nothing is acknowledged
    s = Shipper(server.url, spool_bytes=1000)
    shippers.append(s)
    s.put(b"a" * 600)
    s.put(b"b" * 400)                  # exactly full: still spooled
    assert s.lost == 0
    s.put(b"c")                        # one byte too many
    assert s.lost == 1001
    s.put(b"d" * 99)
    assert (s.shipped, s.lost) == (0, 1100)
    server.always = "ok"
    assert s.close(DEADLINE) is False
    assert server.posts() == [] or all(p["action"] == "503" for p in server.posts())
    assert server.data == b""
    lines = capfd.readouterr().err.splitlines()
    assert lines == ["agentctl: not shipping output to the controller any more: its spool is full "
                     "(AGENT_SHIP_SPOOL_BYTES=1000); 1001 bytes could not be shipped, nor will what follows "
                     "(the container log still has all of it)"]


@pytest.mark.parametrize("where", ["refused", "black-hole"])
def test_an_unreachable_server_never_blocks_put_and_close_is_bounded(
        where: str, shippers: list[Shipper], capfd: pytest.CaptureFixture[str]) -> None:
    hole = None
    if where == "refused":
        url = f"http://127.0.0.1:{closed_port()}/v1/ship"
    else:  # connections are accepted by the kernel, requests never answered
        hole = socket.socket()
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        url = f"http://127.0.0.1:{hole.getsockname()[1]}/v1/ship"
    try:
        s = Shipper(url)
        shippers.append(s)
        data = chunks(8 * MiB, seed=2)
        def put_all() -> None:
            for c in data:
                s.put(c)

        putter = threading.Thread(target=put_all, daemon=True)
        putter.start()
        putter.join(DEADLINE)
        assert not putter.is_alive(), "put blocked"
        start = time.monotonic()
        assert s.close(1.0) is False
        assert time.monotonic() - start < 1.0 + 5.0, "close exceeded its bound"  # generous slack
        assert (s.shipped, s.lost) == (0, 8 * MiB)
        lines = capfd.readouterr().err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"agentctl: could not ship all output to the controller within 1s: {8 * MiB} bytes not "
            "acknowledged"), lines
    finally:
        if hole is not None:
            hole.close()


# ------------------------------------------------------------------ TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    pytest.importorskip("cryptography")
    return TestPKI(tmp_path_factory.mktemp("ship-pki"))


def test_over_tls_the_server_is_verified_with_the_given_ca(pki: TestPKI, tmp_path: Path, shippers: list[Shipper],
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    server = ShipServer(tls=pki.server_context())
    try:
        assert server.url.startswith("https://")
        data = os.urandom(2 * MiB + 3)
        s = Shipper.from_env({"AGENT_CONTROLLER_SHIP_URL": server.url,
                              "AGENT_CONTROLLER_SHIP_CA": pki.ca_pem.decode()})
        assert s is not None
        shippers.append(s)
        s.put(data)
        assert s.close(DEADLINE) is True
        assert bytes(server.data) == data and server.final

        other = TestPKI(tmp_path / "other")  # a CA that did not sign the server's certificate
        server.data.clear()
        server.final = False
        s2 = Shipper(server.url, ca_pem=other.ca_pem.decode())
        shippers.append(s2)
        s2.put(b"secret")
        assert s2.close(2.0) is False
        assert server.data == b"" and s2.shipped == 0
        lines = capfd.readouterr().err.splitlines()
        assert len(lines) == 1 and "CERTIFICATE_VERIFY_FAILED" in lines[0], lines
    finally:
        server.stop()


# ------------------------------------------------------------------ agentctl run, end to end

STDOUT_ONLY = """
import os, random
rng = random.Random(7)
data = rng.randbytes(5 * 1024 * 1024)
i = 0
while i < len(data):
    n = rng.randint(1, 200_000)
    os.write(1, data[i:i + n])
    i += n
"""

MIXED = """
import os, random, sys
rng = random.Random(11)
# stdout: lowercase letters and newlines; stderr: uppercase letters and "!": each byte of the
# combined stream tells which stream it came from
def text(n, alphabet):
    return rng.randbytes(n).translate(bytes(alphabet[i % len(alphabet)] for i in range(256)))
out = text(5 * 1024 * 1024, b"abcdefghijklmnopqrstuvwxyz\\n")
err = text(200_000, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!")
i = j = 0
while i < len(out) or j < len(err):
    if i < len(out):
        n = rng.randint(1, 100_000)
        os.write(1, out[i:i + n])
        i += n
    if j < len(err) and rng.random() < 0.3:
        n = rng.randint(1, 5_000)
        os.write(2, err[j:j + n])
        j += n
sys.exit(int(sys.argv[1]))
"""


def _expected(program: str) -> tuple[bytes, bytes]:
    """What the child programs above write (the same generator, run here)."""
    if program == STDOUT_ONLY:
        return random.Random(7).randbytes(5 * MiB), b""
    rng = random.Random(11)
    def text(n: int, alphabet: bytes) -> bytes:
        return rng.randbytes(n).translate(bytes(alphabet[i % len(alphabet)] for i in range(256)))

    out = text(5 * MiB, b"abcdefghijklmnopqrstuvwxyz\n")
    err = text(200_000, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!")
    return out, err


def _ship_env(server: ShipServer, tmp_path: Path, **extra: str) -> dict[str, str]:
    token = tmp_path / "ship-token"
    token.write_text("pod-token")
    server.tokens = {"pod-token"}
    return clean_env(AGENT_CONTROLLER_SHIP_URL=server.url, AGENT_CONTROLLER_SHIP_CA="",
                     AGENT_CONTROLLER_SHIP_TOKEN_FILE=str(token), **extra)


def test_run_ships_stdout_byte_identical(server: ShipServer, script: Any, tmp_path: Path) -> None:
    server.plan = ["ok", "ok", "500", "ok", "drop-after", "ok", "drop"]
    r = agentctl("run", "--", PY, script(STDOUT_ONLY), env=_ship_env(server, tmp_path))
    expected, _ = _expected(STDOUT_ONLY)
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected, "the passthrough is unchanged"
    assert r.stderr == b""
    assert bytes(server.data) == expected
    assert server.final is True


def test_run_ships_the_combined_output_in_order(server: ShipServer, script: Any, tmp_path: Path) -> None:
    r = agentctl("run", "--", PY, script(MIXED), "3", env=_ship_env(server, tmp_path))
    out, err = _expected(MIXED)
    assert r.returncode == 3
    assert r.stdout == out and r.stderr == err
    shipped = bytes(server.data)
    assert server.final is True and len(shipped) == len(out) + len(err)
    # Each stream's bytes appear once, in order: the combined stream is an interleaving of both.
    from_err = set(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ!")
    assert bytes(b for b in shipped if b not in from_err) == out
    assert bytes(b for b in shipped if b in from_err) == err


def test_run_reports_its_counts_before_it_ships_the_end(server: ShipServer, script: Any, tmp_path: Path) -> None:
    """The controller learns what to wait for (status.output) before the end arrives: its cleanup
    keeps the pod until the shipped copy holds that much (controller/logs.py _await_shipment)."""
    api = FakeAPI()
    try:
        api.add_agent("team-a", "a1", {"phase": "Working"})
        kc = write_kubeconfig(tmp_path / "kc.yaml", api.url, "t", "team-a")
        env = _ship_env(server, tmp_path, AGENT_NAME="a1", AGENT_NAMESPACE="team-a", KUBECONFIG=str(kc))
        r = agentctl("run", "--", PY, "-c", "import os; os.write(1, b'out\\n'); os.write(2, b'err\\n')", env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"out\n", b"err\n")
        assert sorted(bytes(server.data).splitlines()) == [b"err", b"out"] and server.final
        (patch,) = api.patches()
        assert patch["body"]["status"]["output"] == {"bytes": 8, "stdoutBytes": 4, "stderrBytes": 4}
        final = [p for p in server.posts() if p["query"].get("final") == "1"][-1]
        assert patch["at"] < final["at"], "the status report (with the counts) comes before final"
    finally:
        api.stop()


def test_run_terminated_still_ships_everything_and_final(server: ShipServer, spawn: Any, script: Any,
                                                          tmp_path: Path) -> None:
    child = script(
        "import os, signal, sys, time\n"
        "def bye(*_):\n"
        "    os.write(2, b'terminated\\n')\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, bye)\n"
        "os.write(1, b'x' * 300_000 + b'ready\\n')\n"
        "time.sleep(600)\n"
    )
    o = spawn("run", "--", PY, child, env=_ship_env(server, tmp_path, AGENT_GRACE_SECONDS="5"))
    o.wait_for(b"ready\n")
    server.wait(lambda sv: len(sv.data) == 300_006)
    o.proc.send_signal(signal.SIGTERM)
    assert o.finish() == 0
    assert bytes(o.out) == b"x" * 300_000 + b"ready\n"
    assert bytes(o.err).startswith(b"terminated\n")  # then the supervisor's own line on the tree
    assert bytes(server.data) == b"x" * 300_000 + b"ready\nterminated\n" and server.final


def test_a_sigterm_while_the_end_is_held_up_ends_it_within_the_grace_period(
        server: ShipServer, spawn: Any, script: Any, tmp_path: Path) -> None:
    """The child is gone, the controller does not take the rest (503) and the flush bound is long:
    the kubelet's SIGTERM (the pod is being stopped) ends the wait within the grace period, not the
    bound (a test timeout, were it not so)."""
    server.always = "503"
    child = script("import os\nos.write(1, b'%d done\\n' % os.getpid())\n")
    o = spawn("run", "--", PY, child, env=_ship_env(server, tmp_path, AGENT_SHIP_FLUSH_SECONDS="3600",
                                                    AGENT_GRACE_SECONDS="2"))
    o.wait_for(b" done\n")
    pid = int(bytes(o.out).split()[0])
    wait_until(lambda: not Path(f"/proc/{pid}").exists())     # the child exited and was reaped
    server.wait(lambda sv: any(r["action"] == "503" for r in sv.requests))
    o.proc.send_signal(signal.SIGTERM)
    assert o.finish() == 0
    assert "could not ship all output to the controller within" in bytes(o.err).decode()
    assert not server.final


@pytest.mark.parametrize("trouble", ["sealed", "spool-full", "unreachable"])
def test_run_when_shipping_fails_nothing_else_changes(server: ShipServer, script: Any, tmp_path: Path,
                                                      trouble: str) -> None:
    extra: dict[str, str] = {"AGENT_SHIP_FLUSH_SECONDS": "1"}
    if trouble == "sealed":
        server.sealed = True
    elif trouble == "spool-full":
        server.always = "503"
        extra["AGENT_SHIP_SPOOL_BYTES"] = "100000"
    env = _ship_env(server, tmp_path, **extra)
    if trouble == "unreachable":
        env["AGENT_CONTROLLER_SHIP_URL"] = f"http://127.0.0.1:{closed_port()}/v1/ship"
    r = agentctl("run", "--", PY, script(STDOUT_ONLY + "import sys; sys.stderr.write('bye\\n'); sys.exit(5)\n"),
                 env=env)
    expected, _ = _expected(STDOUT_ONLY)
    assert r.returncode == 5
    assert r.stdout == expected
    err = r.stderr.decode(errors="replace")
    assert err.replace(agentctl_lines(err)[0] + "\n", "", 1) == "bye\n", err
    (line,) = agentctl_lines(err)
    assert {"sealed": "the archive is sealed (HTTP 410", "spool-full": "its spool is full",
            "unreachable": "could not ship all output to the controller within 1s"}[trouble] in line, line
    assert not server.final
