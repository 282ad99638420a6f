"""bench/service.py, the Service-like front the chaos run puts before the replicas' ship ports:
each connection goes to an endpoint that accepts it, in turn; one that is away is passed over."""

from __future__ import annotations

import socket
import socketserver
import threading

from bench.process import free_port
from bench.service import Service


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(100)
        self.request.sendall(self.server.server_address[1].to_bytes(2, "big") + data)  # type: ignore[attr-defined]


def _ask(port: int) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(100):
            answer += chunk
    return int.from_bytes(answer[:2], "big"), answer[2:]


def test_connections_go_round_robin_and_pass_over_an_endpoint_that_is_away() -> None:
    servers = [socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo) for _ in range(2)]
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    ports = [s.server_address[1] for s in servers]
    away = free_port()                       # nothing listens there: a replica restarting
    service = Service([ports[0], away, ports[1]]).start()
    try:
        answers = [_ask(service.port) for _ in range(4)]
        assert {data for _, data in answers} == {b"hello"}
        assert {port for port, _ in answers} == set(ports)
    finally:
        service.stop()
        for s in servers:
            s.shutdown()
            s.server_close()
