"""The ship phase: how fast `agentctl run` output reaches the archive, and what it costs the controller.

The controller's ship endpoint (controller/ship.py: HTTPS, the exactly-once offset protocol, writes
into the archive's in-progress directory on this machine's disk) served from this process; N agent
processes, each an `agentctl run` Shipper (controller/agentctl/ship.py, the code agent pods run)
putting M MiB in 64 KiB chunks as fast as they can, all at once. TokenReviews are answered by a stub
(one per token: the endpoint caches them), so the figures are the data path's, not the API
server's. Figures: MiB/s in total and per agent, the controller's CPU seconds per MiB (this
process's CPU; the agents are other processes), and that every byte arrived exactly once.
Backend: `ship-endpoint` (no API server involved).
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from controller.archive import Archive
from controller.metrics import Metrics
from controller.names import AGENT_UID_LABEL, POD_CONTAINER
from controller.podwatch import PodCache
from controller.runtime import Runtime
from controller.ship import AUDIENCE, ShipServer

CHUNK = 64 * 1024

AGENT = r"""
import hashlib, sys, time
from controller.agentctl.ship import Shipper
url, ca_file, token_file, mib = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
shipper = Shipper(url, ca_pem=open(ca_file).read(), token_file=token_file, spool_bytes=2 * mib * 2**20 + 2**20)
block = hashlib.sha256(token_file.encode()).digest() * 2048          # 64 KiB, different per agent
began = time.monotonic()
for _ in range(mib * 16):
    shipper.put(block)
ok = shipper.close(600.0)
print(ok, shipper.shipped, shipper.lost, round(time.monotonic() - began, 3), flush=True)
"""


class _Reviews:
    """TokenReview stub: token `agent-<i>` is the pod `pod-<i>`."""

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        i = body["spec"]["token"].split("-")[1]
        return {"status": {"authenticated": True, "audiences": [AUDIENCE], "user": {
            "extra": {"authentication.kubernetes.io/pod-uid": [f"00000000-0000-0000-0000-{int(i):012d}"]}}}}


async def ship_phase(agents: int = 20, mib_each: int = 50) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-ship-"))
    rt = Runtime(client=_Reviews(), archive=Archive(work / "archive"), metrics=Metrics(),  # type: ignore[arg-type]
                 pods=PodCache())
    for i in range(agents):
        rt.pods.upsert({"metadata": {
            "name": f"a{i}-agent", "namespace": "bench", "uid": f"00000000-0000-0000-0000-{i:012d}",
            "resourceVersion": "1", "labels": {AGENT_UID_LABEL: f"10000000-0000-0000-0000-{i:012d}"},
            "ownerReferences": [{"kind": "Agent", "name": f"a{i}", "uid": f"10000000-0000-0000-0000-{i:012d}",
                                 "controller": True}]},
            "spec": {"containers": [{"name": POD_CONTAINER}]}, "status": {"phase": "Running"}})
    rt.pods.synced.set()
    server = ShipServer(rt, "127.0.0.1", 0, work / "tls")
    await server.start()
    assert rt.ship is not None
    (work / "ca.crt").write_text(rt.ship.ca_pem)
    for i in range(agents):
        (work / f"token-{i}").write_text(f"agent-{i}")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    began = time.monotonic()
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT, rt.ship.url, str(work / "ca.crt"), str(work / f"token-{i}"), str(mib_each),
        stdout=subprocess.PIPE) for i in range(agents)]
    outputs = [(await p.communicate())[0].decode().split() for p in procs]
    elapsed = time.monotonic() - began
    after = resource.getrusage(resource.RUSAGE_SELF)
    await server.stop()
    cpu_seconds = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    total = agents * mib_each
    exact = 0
    for i in range(agents):
        shipped = rt.archive.capture_dir(rt.archive.agent_dir(
            "bench", f"a{i}", f"10000000-0000-0000-0000-{i:012d}")) / "agent.log.shipped"
        block = hashlib.sha256(str(work / f"token-{i}").encode()).digest() * 2048
        data = shipped.read_bytes()
        exact += data == block * (mib_each * 16)
    per_agent = [mib_each / float(o[3]) for o in outputs if len(o) == 4 and float(o[3]) > 0]
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return {
        "backend": "ship-endpoint",
        "agents": agents, "mib_each": mib_each, "mib_total": total,
        "seconds": round(elapsed, 2),
        "mib_per_second_total": round(total / elapsed, 1),
        "mib_per_second_per_agent_median": round(sorted(per_agent)[len(per_agent) // 2], 1) if per_agent else None,
        "controller_cpu_seconds_per_mib": round(cpu_seconds / total, 4),
        "final_acknowledged": sum(o[0] == "True" for o in outputs),
        "exactly_once": exact,
    }


if __name__ == "__main__":
    import json

    agents = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    mib = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    print(json.dumps(asyncio.run(ship_phase(agents, mib)), indent=2))
