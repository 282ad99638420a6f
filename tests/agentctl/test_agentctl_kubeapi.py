"""agentctl's own Kubernetes client (``controller.agentctl.kubeapi``, standard library only).

Against the stand-in API of :mod:`fakeapi`, over HTTPS with a test CA: the in-cluster service
account (token re-read for every request, the CA, the pod's namespace), kubeconfigs (CA file or
data, token, token file, client certificate as files or data, several files in ``KUBECONFIG``,
JSON without PyYAML, exec plugins refused), and agentctl with none of the controller's
dependencies importable.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentctl_helpers import DEADLINE, REPO, agentctl, clean_env
from fakeapi import FakeAPI, TestPKI

from controller.agentctl import kubeapi
from controller.agentctl import status as st

NOT_FOR_AGENTS = ("kopf", "kubernetes", "aiohttp", "psutil", "prometheus_client", "yaml")
"""Packages agentctl must not need (PyYAML is optional: only to read a YAML kubeconfig)."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    pytest.importorskip("cryptography")
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_api(pki: TestPKI) -> Iterator[FakeAPI]:
    fake = FakeAPI(tls=pki.server_context())
    yield fake
    fake.stop()


@pytest.fixture
def mtls_api(pki: TestPKI) -> Iterator[FakeAPI]:
    fake = FakeAPI(tls=pki.server_context(require_client_cert=True))
    yield fake
    fake.stop()


@pytest.fixture
def no_kube_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for k, v in clean_env().items():
        monkeypatch.setenv(k, v)
    for k in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "AGENT_SERVICEACCOUNT_DIR"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def service_account(directory: Path, pki: TestPKI, token: str = "sa-token-1", namespace: str = "team-a") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "token").write_text(token)
    (directory / "ca.crt").write_bytes(pki.ca_pem)
    (directory / "namespace").write_text(namespace)
    return directory


def in_cluster_env(api: FakeAPI, sa: Path, **extra: str) -> dict[str, str]:
    return clean_env(KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(api.port),
                     AGENT_SERVICEACCOUNT_DIR=str(sa), **extra)


def kubeconfig(path: Path, cluster: dict[str, Any], user: dict[str, Any], namespace: str = "team-a") -> Path:
    """A JSON kubeconfig (JSON is YAML: readable with and without PyYAML)."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": namespace}}],
    }))
    return path


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# ------------------------------------------------------------------ in-cluster


def test_in_cluster_uses_the_service_account_and_rereads_the_token(
    tls_api: FakeAPI, pki: TestPKI, tmp_path: Path, no_kube_env: pytest.MonkeyPatch
) -> None:
    tls_api.add_agent("team-a", "a1", {"phase": "Running"})
    sa = service_account(tmp_path / "sa", pki)
    for k, v in in_cluster_env(tls_api, sa, AGENT_NAME="a1").items():
        no_kube_env.setenv(k, v)
    no_kube_env.delenv("AGENT_NAMESPACE", raising=False)  # the pod's namespace file says team-a
    assert st.report("Working", progress=10).written
    (sa / "token").write_text("sa-token-2\n")  # the kubelet rotated it
    assert st.report("Working", progress=20).written
    auths = [r["auth"] for r in tls_api.requests]
    assert auths == ["Bearer sa-token-1"] * 2 + ["Bearer sa-token-2"] * 2
    assert tls_api.objects[("team-a", "a1")]["status"]["progress"] == 20


def test_in_cluster_kill_defaults_to_the_pods_namespace(tls_api: FakeAPI, pki: TestPKI, tmp_path: Path) -> None:
    tls_api.add_agent("team-a", "b2", {"phase": "Working"})
    r = agentctl("kill", "b2", env=in_cluster_env(tls_api, service_account(tmp_path / "sa", pki)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"agent.agentcontroller.dev/b2 terminate requested (namespace team-a)\n"
    assert tls_api.objects[("team-a", "b2")]["spec"]["terminate"] is True


def test_in_cluster_without_a_token_is_one_line(tls_api: FakeAPI, pki: TestPKI, tmp_path: Path) -> None:
    sa = service_account(tmp_path / "sa", pki)
    (sa / "token").unlink()
    r = agentctl("report", "--phase", "Working", env=in_cluster_env(tls_api, sa, AGENT_NAME="a1"))
    assert r.returncode == 1
    assert r.stderr.decode() == (f"agentctl: error: cannot load in-cluster config: cannot read token file "
                                 f"{sa / 'token'}: No such file or directory\n")


def test_in_cluster_without_the_port_is_one_line(pki: TestPKI, tmp_path: Path) -> None:
    env = clean_env(KUBERNETES_SERVICE_HOST="127.0.0.1", AGENT_SERVICEACCOUNT_DIR=str(service_account(tmp_path, pki)),
                    AGENT_NAME="a1")
    r = agentctl("report", "--phase", "Working", env=env)
    assert r.returncode == 1
    assert r.stderr == (b"agentctl: error: cannot load in-cluster config: KUBERNETES_SERVICE_HOST and "
                        b"KUBERNETES_SERVICE_PORT must both be set\n")


def test_a_server_the_ca_does_not_vouch_for_is_refused(
    tls_api: FakeAPI, tmp_path: Path, no_kube_env: pytest.MonkeyPatch
) -> None:
    other = TestPKI(tmp_path / "other")
    sa = service_account(tmp_path / "sa", other)  # a CA that did not sign the server's certificate
    for k, v in in_cluster_env(tls_api, sa, AGENT_NAME="a1", AGENT_NAMESPACE="team-a").items():
        no_kube_env.setenv(k, v)
    with pytest.raises(st.StatusError, match=r"API unreachable: https://127\.0\.0\.1:\d+: .*certificate verify failed"):
        st.report("Working", retry_seconds=1)
    assert tls_api.requests == []


# ------------------------------------------------------------------ kubeconfig


def test_kubeconfig_with_ca_data_and_client_certificate_data(
    mtls_api: FakeAPI, pki: TestPKI, tmp_path: Path, no_kube_env: pytest.MonkeyPatch
) -> None:
    mtls_api.add_agent("team-a", "a1", {"phase": "Running"})
    kc = kubeconfig(tmp_path / "kc.json", {"server": mtls_api.url, "certificate-authority-data": b64(pki.ca_pem)},
                    {"client-certificate-data": b64(pki.client_cert_pem),
                     "client-key-data": b64(pki.client_key_pem)})
    no_kube_env.setenv("KUBECONFIG", str(kc))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    no_kube_env.setattr(kubeapi.tempfile, "tempdir", str(tmp))  # where the key is written to be loaded
    res = st.kill("a1", st.default_namespace())
    assert res.requested
    assert [r["client_cn"] for r in mtls_api.requests] == ["agent-user", "agent-user"]
    assert [r["auth"] for r in mtls_api.requests] == [None, None]
    assert list(tmp.iterdir()) == [], "key material left behind"


def test_kubeconfig_with_relative_files_and_a_token_file(
    mtls_api: FakeAPI, pki: TestPKI, tmp_path: Path, no_kube_env: pytest.MonkeyPatch
) -> None:
    mtls_api.add_agent("team-a", "a1", {"phase": "Running"})
    d = tmp_path / "conf"
    d.mkdir()
    for src, name in ((pki.ca, "ca.pem"), (pki.client_cert, "me.crt"), (pki.client_key, "me.key")):
        (d / name).write_bytes(src.read_bytes())
    (d / "token").write_text("file-token\n")
    kc = kubeconfig(d / "config", {"server": mtls_api.url, "certificate-authority": "ca.pem"},
                    {"client-certificate": "me.crt", "client-key": "me.key", "tokenFile": "token"})
    no_kube_env.setenv("KUBECONFIG", str(kc))
    no_kube_env.chdir(tmp_path)  # relative to the kubeconfig's directory, not the working directory
    assert st.kill("a1", "team-a").requested
    assert {(r["client_cn"], r["auth"]) for r in mtls_api.requests} == {("agent-user", "Bearer file-token")}


def test_kubeconfig_list_first_definition_wins(
    tls_api: FakeAPI, pki: TestPKI, tmp_path: Path, no_kube_env: pytest.MonkeyPatch
) -> None:
    tls_api.add_agent("team-z", "a1", {"phase": "Running"})
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"current-context": "x", "users": [{"name": "u", "user": {"token": "winner"}}]}))
    second = kubeconfig(tmp_path / "second.json",
                        {"server": tls_api.url, "certificate-authority-data": b64(pki.ca_pem)},
                        {"token": "loser"}, namespace="team-z")
    no_kube_env.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{first}:{second}")
    assert st.default_namespace() == "team-z"
    assert st.kill("a1", "team-z").requested
    assert {r["auth"] for r in tls_api.requests} == {"Bearer winner"}


def test_insecure_skip_tls_verify(tls_api: FakeAPI, tmp_path: Path, no_kube_env: pytest.MonkeyPatch) -> None:
    tls_api.add_agent("team-a", "a1", {"phase": "Completed"})
    kc = kubeconfig(tmp_path / "kc", {"server": tls_api.url, "insecure-skip-tls-verify": True}, {"token": "t"})
    no_kube_env.setenv("KUBECONFIG", str(kc))
    assert st.kill("a1", "team-a").phase == "Completed"


@pytest.mark.parametrize("user,needle", [
    ({"exec": {"command": "gke-gcloud-auth-plugin", "apiVersion": "client.authentication.k8s.io/v1"}},
     "authenticates with an exec plugin, which agentctl does not run"),
    ({"auth-provider": {"name": "oidc"}}, "authenticates with an auth-provider, which agentctl does not run"),
    ({"client-certificate-data": b64(b"x")}, "a client certificate needs client-key or client-key-data"),
])
def test_unsupported_or_broken_kubeconfig_users_are_one_line(tmp_path: Path, user: dict[str, Any],
                                                              needle: str) -> None:
    kc = kubeconfig(tmp_path / "kc", {"server": "https://127.0.0.1:1"}, user)
    r = agentctl("kill", "a1", "-n", "x", env=clean_env(KUBECONFIG=str(kc)))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith(f"agentctl: error: cannot load kubeconfig {kc}: "), err
    assert needle in err, err


def test_without_pyyaml_a_json_kubeconfig_works_and_a_yaml_one_says_why_not(
    tls_api: FakeAPI, pki: TestPKI, tmp_path: Path, no_kube_env: pytest.MonkeyPatch
) -> None:
    tls_api.add_agent("team-a", "a1", {"phase": "Failed"})
    no_kube_env.setitem(sys.modules, "yaml", None)  # import yaml: ImportError
    kc = kubeconfig(tmp_path / "kc.json", {"server": tls_api.url, "certificate-authority-data": b64(pki.ca_pem)},
                    {"token": "t"})
    no_kube_env.setenv("KUBECONFIG", str(kc))
    assert st.kill("a1", "team-a").phase == "Failed"
    yml = tmp_path / "kc.yaml"
    yml.write_text("apiVersion: v1\nkind: Config\ncurrent-context: x\n")
    no_kube_env.setenv("KUBECONFIG", str(yml))
    with pytest.raises(st.StatusError) as err:
        st.kill("a1", "team-a")
    assert str(err.value) == (f"cannot load kubeconfig {yml}: {yml} is not JSON, and reading YAML needs PyYAML, "
                              "which is not installed (pip install pyyaml, or give agentctl a JSON kubeconfig)")


def test_retry_after_header_values() -> None:
    assert kubeapi.retry_after({"Retry-After": "3"}) == 3.0
    assert kubeapi.retry_after({"Retry-After": "-3"}) == 0.0
    assert kubeapi.retry_after({}) is None
    assert kubeapi.retry_after({"Retry-After": "soon"}) is None
    assert kubeapi.retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # in the past
    from datetime import UTC, datetime, timedelta
    from email.utils import format_datetime

    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = kubeapi.retry_after({"Retry-After": later})
    assert value is not None and 25 < value <= 30


def test_redirects_are_not_followed(no_kube_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A redirect would carry the token to another server: it is an error instead."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        kc = kubeconfig(tmp_path / "kc", {"server": f"http://127.0.0.1:{server.server_address[1]}"}, {"token": "t"})
        no_kube_env.setenv("KUBECONFIG", str(kc))
        with pytest.raises(st.StatusError, match="HTTP 302"):
            st.kill("a1", "team-a", retry_seconds=1)
        assert len(seen) == 1
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ nothing but the standard library

BLOCKER = f"""
import importlib.abc, sys
class Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_FOR_AGENTS!r}:
            raise ImportError("blocked for this test: " + name)
        return None
sys.meta_path.insert(0, Blocked())
"""


def test_agentctl_needs_none_of_the_controllers_dependencies(tls_api: FakeAPI, pki: TestPKI,
                                                             tmp_path: Path) -> None:
    """With kopf, kubernetes, aiohttp, psutil, prometheus_client and PyYAML unimportable, every
    agentctl module imports, imports nothing else of ``controller``, and kill, report and run work."""
    code = BLOCKER + (
        "import controller.agentctl.cli, controller.agentctl.status, controller.agentctl.supervise\n"
        "import controller.agentctl.kubeapi, controller.agentctl.args\n"
        "print(sorted(m for m in sys.modules if m.startswith('controller')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], env=clean_env(), cwd=REPO, capture_output=True,
                       timeout=DEADLINE, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().strip() == str(sorted(
        ["controller", "controller.agentctl", "controller.agentctl.args", "controller.agentctl.cli",
         "controller.agentctl.kubeapi", "controller.agentctl.status", "controller.agentctl.supervise"]))

    tls_api.add_agent("team-a", "a1", {"phase": "Working"})
    run_cli = BLOCKER + "import runpy\nrunpy.run_module('controller.agentctl.cli', run_name='__main__')\n"
    kc = kubeconfig(tmp_path / "kc.json", {"server": tls_api.url, "certificate-authority-data": b64(pki.ca_pem)},
                    {"token": "t"})
    env = clean_env(KUBECONFIG=str(kc), AGENT_NAME="a1", AGENT_NAMESPACE="team-a", AGENT_GRACE_SECONDS="1")

    def cli(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-c", run_cli, *args], env=env, cwd=REPO, capture_output=True,
                              timeout=DEADLINE, check=False)

    r = cli("report", "--phase", "Working", "--progress", "50")
    assert r.returncode == 0, r.stderr
    # A stray left behind: the supervisor finds it (in /proc), terminates it, reports the exit.
    r = cli("run", "--", "sh", "-c", "sleep 600 & echo started; exit 3")
    assert r.returncode == 3, r.stderr
    assert r.stdout == b"started\n"
    assert r.stderr == b"agentctl: process tree clean: 0 descendants left (2 reaped, 0 killed)\n"
    s = tls_api.objects[("team-a", "a1")]["status"]
    assert (s["phase"], s["progress"], s["output"]["stdoutBytes"]) == ("Failed", 50, 8)
    r = cli("kill", "a1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"agent.agentcontroller.dev/a1 already ended (Failed); nothing to kill\n"
