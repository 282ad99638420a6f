"""controller/ship.py: the endpoint agentctl run ships output to — over real HTTPS, with a stub
TokenReview — and what inject() puts into an agent pod."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from aiotest import async_test
from controller.archive import Archive
from controller.metrics import Metrics
from controller.names import AGENT_UID_LABEL, POD_CONTAINER
from controller.podwatch import PodCache
from controller.runtime import Runtime
from controller.ship import AUDIENCE, TOKEN_PATH, ShipServer, ShipTarget, ensure_certificate, inject

AGENT_UID = "0b0c0d0e-1111-2222-3333-444455556666"
POD_UID = "9f9f9f9f-1111-2222-3333-444455556666"


class Reviews:
    """A stub API client answering TokenReviews: token "good" is the agent pod's, "stranger" another pod's."""

    def __init__(self) -> None:
        self.calls = 0

    async def get_or_none(self, res: Any, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.request("GET", res.path(namespace, name))

    async def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict[str, Any]:
        self.calls += 1
        if method == "GET":                     # a pod the cache does not hold
            name = path.rsplit("/", 1)[1]
            assert path == f"/api/v1/namespaces/ns/pods/{name}"
            return PODS[name]
        assert (method, path) == ("POST", "/apis/authentication.k8s.io/v1/tokenreviews")
        assert body["spec"]["audiences"] == [AUDIENCE]
        token = body["spec"]["token"]
        if token not in TOKENS:
            return {"status": {"authenticated": False, "error": "invalid token"}}
        name = TOKENS[token]
        return {"status": {"authenticated": True, "audiences": [AUDIENCE], "user": {
            "username": "system:serviceaccount:ns:a1-agent",
            "extra": {"authentication.kubernetes.io/pod-uid": [PODS[name]["metadata"]["uid"]],
                      "authentication.kubernetes.io/pod-name": [name]}}}}


def agent_pod(name: str, uid: str, agent: str, agent_uid: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "1",
                         "labels": {AGENT_UID_LABEL: agent_uid},
                         "ownerReferences": [{"kind": "Agent", "name": agent, "uid": agent_uid, "controller": True}]},
            "spec": {"containers": [{"name": POD_CONTAINER}]}, "status": {"phase": "Running"}}


FRESH_AGENT_UID = "99999999-8888-7777-6666-555555555555"
PODS = {
    "a1-agent": agent_pod("a1-agent", POD_UID, "a1", AGENT_UID),
    # created a moment ago: the pod watch has not brought it yet
    "a2-agent": agent_pod("a2-agent", "22222222-3333-4444-5555-666666666666", "a2", FRESH_AGENT_UID),
    # not an agent pod (no Agent owns it)
    "other": {"metadata": {"name": "other", "namespace": "ns", "uid": "11111111-1111-2222-3333-444455556666"}},
}
TOKENS = {"good": "a1-agent", "fresh": "a2-agent", "stranger": "other"}


def runtime(tmp_path: Path) -> Runtime:
    rt = Runtime(client=Reviews(), archive=Archive(tmp_path / "archive"), metrics=Metrics(),  # type: ignore[arg-type]
                 pods=PodCache())
    rt.pods.upsert(PODS["a1-agent"])
    rt.pods.synced.set()
    return rt


async def call(session: aiohttp.ClientSession, url: str, token: str, method: str = "POST", data: bytes = b"",
               **query: Any) -> tuple[int, dict[str, Any]]:
    async with session.request(method, url, params={k: str(v) for k, v in query.items()}, data=data,
                               headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, json.loads(await r.read() or b"{}")


@async_test
async def test_bytes_are_held_exactly_once_and_sealed_after_final(tmp_path: Path) -> None:
    rt = runtime(tmp_path)
    server = ShipServer(rt, "127.0.0.1", 0, tmp_path / "tls")
    await server.start()
    try:
        assert rt.ship is not None and rt.ship.url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cadata=rt.ship.ca_pem)        # verified with the CA pods get
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as s:
            url = rt.ship.url
            assert await call(s, url, "good", "GET") == (200, {"offset": 0, "final": False})
            assert await call(s, url, "good", data=b"hello ", offset=0) == (200, {"offset": 6, "final": False})
            # A retry of what arrived already, plus more: only the new bytes are kept.
            assert (await call(s, url, "good", data=b"hello world\n", offset=0))[1]["offset"] == 12
            status, body = await call(s, url, "good", data=b"later", offset=20)     # a gap
            assert (status, body["offset"]) == (409, 12)
            status, body = await call(s, url, "good", final=1, offset=10)          # final, bytes missing
            assert (status, body["offset"]) == (409, 12)
            assert await call(s, url, "good", final=1, offset=12) == (200, {"offset": 12, "final": True})
            assert (await call(s, url, "good", data=b"more", offset=12))[0] == 409   # nothing after final
            assert (await call(s, url, "nobody", "GET"))[0] == 401
            assert (await call(s, url, "stranger", "GET"))[0] == 403
            # A new pod ships before the pod watch brings it: read from the API, then taken.
            assert rt.pods.get(PODS["a2-agent"]["metadata"]["uid"]) is None
            assert await call(s, url, "fresh", data=b"early", offset=0) == (200, {"offset": 5, "final": False})
            assert rt.pods.get(PODS["a2-agent"]["metadata"]["uid"]) is not None
            assert (tmp_path / "archive" / "ns" / "a2" / f".{FRESH_AGENT_UID}.capture" / "agent.log.shipped"
                    ).read_bytes() == b"early"
            assert (await call(s, url, "good", "GET", container="sidecar"))[0] == 403
            directory = rt.archive.agent_dir("ns", "a1", AGENT_UID)
            pending = rt.archive.begin(directory)       # (the shipped copy survives begin: a restart)
            assert pending.shipped("agent.log") == 12
            pending.use_shipped("agent.log")
            pending.logs["agent.log"] = {"container": POD_CONTAINER, "previous": False, "complete": True}
            from controller.ship import seal
            await seal(rt, directory)
            assert (await call(s, url, "good", data=b"x", offset=12))[0] == 410
            pending.commit()
            assert (directory / "agent.log").read_bytes() == b"hello world\n"
            assert sorted(p.name for p in directory.iterdir()) == ["MANIFEST.json", "agent.log"]
        assert rt.client.calls <= 6           # reviews are cached (each token reviewed once), 2 pod GETs
        assert rt.metrics.shipped_bytes._value.get() == 12 + 5
    finally:
        await server.stop()


def test_inject_gives_the_agent_container_the_url_the_ca_and_a_token_of_our_audience() -> None:
    pod = {"spec": {"containers": [{"name": POD_CONTAINER, "env": [{"name": "AGENT_NAME", "value": "a1"}]},
                                   {"name": "sidecar"}]}}
    inject(pod, ShipTarget("https://ship.example:9443/v1/ship", "PEM"))
    agent, sidecar = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in agent["env"]}
    assert env == {"AGENT_NAME": "a1", "AGENT_CONTROLLER_SHIP_URL": "https://ship.example:9443/v1/ship",
                   "AGENT_CONTROLLER_SHIP_CA": "PEM", "AGENT_CONTROLLER_SHIP_TOKEN_FILE": TOKEN_PATH}
    assert agent["volumeMounts"] == [{"name": "agent-controller-ship-token",
                                      "mountPath": "/var/run/secrets/agent-controller", "readOnly": True}]
    assert pod["spec"]["volumes"] == [{"name": "agent-controller-ship-token", "projected": {"sources": [
        {"serviceAccountToken": {"audience": AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}}]
    assert "env" not in sidecar


def test_a_template_cannot_take_the_ship_token_volume_name() -> None:
    import pytest

    from controller.children import InvalidSpec, pod

    agent = {"metadata": {"name": "a1", "namespace": "ns", "uid": AGENT_UID},
             "spec": {"image": "img", "podTemplate": {"spec": {"volumes": [
                 {"name": "agent-controller-ship-token", "emptyDir": {}}]}}}}
    with pytest.raises(InvalidSpec, match="agent-controller-ship-token"):
        pod(agent)


def test_replicas_that_make_the_certificate_at_once_share_one_ca(tmp_path: Path) -> None:
    """The default `<archive>/.ship-tls`: replicas starting together race to make it; the first
    rename wins, every other loads the winner's (one CA for all), and a restart keeps it."""
    import threading

    target = tmp_path / "archive" / ".ship-tls"
    barrier = threading.Barrier(4)
    results: list[bytes] = []

    def replica() -> None:
        barrier.wait()
        _cert, _key, ca = ensure_certificate(target, "https://agent-controller-ship.ns.svc:9443/v1/ship")
        results.append(ca.read_bytes())

    threads = [threading.Thread(target=replica) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and len(set(results)) == 1
    assert sorted(p.name for p in target.iterdir()) == ["ca.crt", "ca.key", "tls.crt", "tls.key"]
    assert (target / "ca.key").stat().st_mode & 0o077 == 0 and (target / "tls.key").stat().st_mode & 0o077 == 0
    assert [p.name for p in target.parent.iterdir()] == [".ship-tls"]      # no half-made sibling left
    assert ensure_certificate(target, None)[2].read_bytes() == results[0]   # a restart: the same CA
    context = ssl.create_default_context(cafile=str(target / "ca.crt"))
    context.load_cert_chain(target / "tls.crt", target / "tls.key")


def test_an_empty_mount_point_is_filled_in_place_and_a_given_secret_is_used_as_it_is(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    cert, key, ca = ensure_certificate(mount, None)
    assert cert.parent == mount and cert.is_file() and key.is_file() and ca.is_file()
    before = cert.read_bytes()
    assert ensure_certificate(mount, "https://other.example:1/v1/ship")[0].read_bytes() == before


def test_a_finished_log_left_uncommitted_is_whole_when_it_holds_what_the_agent_reported(tmp_path: Path) -> None:
    """A run took the shipped copy (or read all of the log) and was killed, or lost its lease,
    before the commit; the next finds it with the pod gone: complete when its size is the agent's
    reported count, `pod_gone` (not known) otherwise."""
    import asyncio

    from controller.logs import _take_shipped

    rt = runtime(tmp_path)
    archive = rt.archive
    data = b"every byte\n" * 100
    for i, (reported, complete) in enumerate(((len(data), True), (len(data) + 1, False), (None, False))):
        directory = archive.agent_dir("ns", f"a{i}", AGENT_UID)
        first = archive.begin(directory)
        (first.tmp / "agent.log.shipped").write_bytes(data)
        first.use_shipped("agent.log")
        first.close()                                      # the run ends before its commit
        again = archive.begin(directory)
        assert again.salvaged == ["agent.log"]
        expected = {POD_CONTAINER: reported} if reported is not None else None
        assert (asyncio.run(_take_shipped(rt, again, expected)) == "agent.log") is complete
        result = again.commit()
        manifest = json.loads((result.directory / "MANIFEST.json").read_text())
        (entry,) = [e for e in manifest["files"] if e["name"] == "agent.log"]
        assert entry["size"] == len(data)
        assert entry["complete"] is complete and (complete or entry["missing"] == "pod_gone")
