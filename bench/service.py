"""What a Kubernetes Service gives agent pods in front of the controller's replicas: one address,
each new connection forwarded to the next endpoint that accepts it (round robin, as kube-proxy
spreads connections). A standby replica answers the ship endpoint with 503 and `agentctl run`
reconnects, so its bytes reach the leader, as they do through the chart's `<release>-ship`
Service."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading


class Service:
    def __init__(self, ports: list[int], host: str = "127.0.0.1"):
        self.ports, self.host = list(ports), host
        self.port = 0
        self._next = itertools.cycle(range(len(self.ports)))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-service", daemon=True)
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self) -> Service:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, self.host, 0), self._loop).result(30)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Held here: asyncio drops its own reference to a connection's task once the client side
        # is lost, and a task waiting on the other side would then be garbage-collected mid-way.
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        upstream = None
        for _ in range(len(self.ports)):
            port = self.ports[next(self._next)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(self.host, port), 5)
                break
            except (OSError, asyncio.TimeoutError):
                continue                 # an endpoint that is not there (a replica restarting)
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (up_writer, writer):
                with contextlib.suppress(OSError, RuntimeError):
                    w.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One direction; its end passed on as a half-close (the other direction may still answer)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError, asyncio.IncompleteReadError):
        writer.close()
