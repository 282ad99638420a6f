"""The fault proxy (controller/controlplane/proxy.py) in front of either backend: the caller's
identity passes through, requests are counted, faults answer as the API server would, hold
requests until cleared, and cut streams mid-body."""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest

from helpers import Api, HttpError, wait_for


@pytest.fixture
def proxy(backend: Any) -> Iterator[Any]:
    from controller.controlplane.proxy import ApiProxy
    from controller.kube.client import ClientConfig

    p = ApiProxy(ClientConfig(server=backend.url, ca_file=backend.ca_file)).start()
    yield p
    p.stop()


def _whoami(api: Api) -> str:
    review = api.call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                      {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    return str(review["status"]["userInfo"]["username"])


def test_the_callers_identity_passes_through(backend: Any, backend_ns: str, proxy: Any) -> None:
    direct = _whoami(backend.api())
    assert _whoami(Api(proxy.url, backend.admin_token)) == direct
    with pytest.raises(HttpError) as refused:                  # no credentials, none upstream
        Api(proxy.url, "").call("GET", f"/api/v1/namespaces/{backend_ns}/configmaps")
    assert refused.value.status in (401, 403)


def test_faults_answer_as_the_api_server_does_and_are_counted(backend: Any, backend_ns: str, proxy: Any) -> None:
    api = Api(proxy.url, backend.admin_token)
    path = f"/api/v1/namespaces/{backend_ns}/configmaps"
    fault = proxy.faults.inject(verb="list", resource="configmaps", namespace=backend_ns, status=429,
                                retry_after=3, times=2)
    for _ in range(2):
        with pytest.raises(HttpError) as throttled:
            api.call("GET", path)
        assert throttled.value.status == 429
        assert throttled.value.body["reason"] == "TooManyRequests"
        assert throttled.value.body["details"]["retryAfterSeconds"] == 3
    assert api.call("GET", path)["kind"] == "ConfigMapList"          # times=2: the third is served
    assert fault.hits == 2
    assert proxy.requests[("list", "configmaps")] == 3
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    proxy.faults.inject(verb="list", resource="configmaps", status=503, retry_after=2)
    conn.request("GET", path, headers={"Authorization": f"Bearer {backend.admin_token}"})
    resp = conn.getresponse()
    assert (resp.status, resp.getheader("Retry-After")) == (503, "2")
    assert json.loads(resp.read())["code"] == 503
    conn.close()


def test_a_held_request_is_answered_when_cleared(backend: Any, backend_ns: str, proxy: Any) -> None:
    api = Api(proxy.url, backend.admin_token)
    fault = proxy.faults.inject(verb="get", resource="namespaces", name=backend_ns, hang=True)
    answer: dict[str, Any] = {}
    held = threading.Thread(target=lambda: answer.update(ns=api.call("GET", f"/api/v1/namespaces/{backend_ns}")))
    held.start()
    wait_for(lambda: fault.hits == 1, message="the request is held")
    assert not answer
    proxy.faults.clear()
    held.join(30)
    assert answer["ns"]["metadata"]["name"] == backend_ns


def test_a_stream_is_cut_mid_body(backend: Any, backend_ns: str, proxy: Any) -> None:
    api = backend.api()
    for i in range(3):
        api.call("POST", f"/api/v1/namespaces/{backend_ns}/configmaps",
                 {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}"}, "data": {"k": "v" * 200}})
    proxy.faults.inject(verb="watch", resource="configmaps", namespace=backend_ns, cut_after=100)
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    query = urllib.parse.urlencode({"watch": "true", "resourceVersion": "0"})
    conn.request("GET", f"/api/v1/namespaces/{backend_ns}/configmaps?{query}",
                 headers={"Authorization": f"Bearer {backend.admin_token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    received = b""
    with pytest.raises((http.client.IncompleteRead, ConnectionError, http.client.HTTPException)):
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                raise ConnectionError("the stream ended without its final chunk")
            received += chunk
    assert len(received) == 100 and received.startswith(b'{"type":"ADDED"'), received
    assert proxy.cut == 1
    conn.close()


def test_an_outage_drops_what_is_in_flight_and_then_serves_again(backend: Any, backend_ns: str, proxy: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=30)
    query = urllib.parse.urlencode({"watch": "true"})
    conn.request("GET", f"/api/v1/namespaces/{backend_ns}/configmaps?{query}",
                 headers={"Authorization": f"Bearer {backend.admin_token}"})
    assert conn.getresponse().status == 200              # a watch in flight
    proxy.outage(3600)
    wait_for(lambda: proxy.outages == 1, message="the outage began")
    api = Api(proxy.url, backend.admin_token)
    with pytest.raises(OSError):                         # new connections are dropped
        api.call("GET", f"/api/v1/namespaces/{backend_ns}")
    proxy.outage(0)                                      # it is over
    wait_for(lambda: proxy.outages == 2, message="the outage ended")
    assert api.call("GET", f"/api/v1/namespaces/{backend_ns}")["metadata"]["name"] == backend_ns
    conn.close()
