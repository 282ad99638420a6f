"""What `kubectl get agents` (and `-o wide`) and `kubectl explain agent.spec.cleanup` show, for a
running, a failed and a cleaned-up Agent: through the emulator's server-side tables with the real
controller, and compared with a real kube-apiserver's table response for the same Agents (their
status copied from the emulator's, as the controller wrote it), when the control plane's binaries
are there (AGENT_CONTROLLER_CONTROLPLANE_BIN, or scripts/install-control-plane.sh; never built here).
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import script, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crd.yaml"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
AGE = re.compile(r"^\d+[smhdy](\d+[smhd])?$")
COLUMNS = ["NAME", "PHASE", "REASON", "PROGRESS", "POD", "CLEANUP", "AGE"]
WIDE = COLUMNS + ["NODE", "TRIGGER", "ARCHIVED", "FINISHED"]
SPECS = {
    "busy": {"image": "agent:1", "env": script([{"log": "working\n"}, {"sleep": 3600}])},
    "broken": {"image": "agent:1", "env": script([{"log": "calling the tool\n"}, {"exit": 1}])},
    "done": {"image": "agent:1", "env": script([{"log": "all done\n"}, {"exit": 0}])},
}


@functools.cache
def kubectl_binary() -> str | None:
    """The control plane's kubectl (same release as its API server) when built, else kubectl on PATH."""
    from controller.controlplane import BinariesUnavailable, ensure_binaries

    try:
        return str(ensure_binaries(build=False, echo=False) / "kubectl")
    except BinariesUnavailable:
        return shutil.which("kubectl")


def kubectl(kubeconfig: str | Path, *args: str) -> str:
    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl not found")
    proc = subprocess.run([binary, "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def parse(printed: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """kubectl's aligned columns (cells may be blank) -> header, {name: {column: cell}}."""
    lines = printed.rstrip("\n").splitlines()
    header = lines[0]
    names = header.split()
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    rows = {}
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, starts[1:] + [len(line) + 1])]
        rows[cells[0]] = dict(zip(names, cells))
    return names, rows


def table(url: str, token: str, path: str, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}", "Accept": TABLE})
    with urllib.request.urlopen(req, timeout=30, context=context) as resp:
        return dict(json.load(resp))


def three_agents(api: Any, ns: str) -> dict[str, dict[str, Any]]:
    """A running, a failed and a completed Agent, the last two cleaned up, as the controller left them."""
    for name, spec in SPECS.items():
        api.create_agent(ns, name, spec)

    def settled() -> dict[str, dict[str, Any]] | None:
        agents = {name: api.agent(ns, name) for name in SPECS}
        st = {n: a.get("status") or {} for n, a in agents.items()}
        ok = (st["busy"].get("phase") == "Running" and st["busy"].get("nodeName")
              and all((st[n].get("cleanup") or {}).get("state") == "Succeeded" for n in ("broken", "done")))
        return agents if ok else None

    return dict(wait_for(settled, message="running, failed and cleaned up"))


def test_kubectl_get_agents_shows_reason_and_wide_columns(api, ns, cluster, controller, tmp_path):
    agents = three_agents(api, ns)
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"), namespace=ns)
    names, rows = parse(kubectl(kubeconfig, "get", "agents"))
    assert names == COLUMNS
    wide_names, wide = parse(kubectl(kubeconfig, "get", "agents", "-o", "wide"))
    assert wide_names == WIDE
    for name, agent in agents.items():
        st = agent["status"]
        cleanup = st.get("cleanup") or {}
        row = wide[name]
        # (two kubectl calls: AGE may tick between them)
        assert {k: v for k, v in rows[name].items() if k != "AGE"} == {k: row[k] for k in COLUMNS if k != "AGE"}
        assert row["PHASE"] == st["phase"] and row["REASON"] == (st.get("reason") or "")
        assert row["POD"] == name and row["NODE"] == st["nodeName"] != ""      # the node it ran on
        assert row["CLEANUP"] == cleanup.get("state", "") and row["TRIGGER"] == cleanup.get("trigger", "")
        assert row["ARCHIVED"] == str(cleanup.get("archivedBytes", "")) and AGE.match(row["AGE"])
    assert wide["busy"]["PHASE"] == "Running" and wide["busy"]["FINISHED"] == "" and wide["busy"]["CLEANUP"] == ""
    assert (wide["broken"]["PHASE"], wide["broken"]["REASON"], wide["broken"]["TRIGGER"]) == ("Failed", "PodFailed", "Failed")
    assert (wide["done"]["PHASE"], wide["done"]["REASON"], wide["done"]["TRIGGER"]) == \
        ("Completed", "PodSucceeded", "Completed")
    for name in ("broken", "done"):
        assert int(wide[name]["ARCHIVED"]) > 0 and AGE.match(wide[name]["FINISHED"]), wide[name]
        assert wide[name]["CLEANUP"] == "Succeeded"


def test_explain_cleanup_says_defaults_and_limits(cluster, tmp_path):
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"))
    text = kubectl(kubeconfig, "explain", "agent.spec.cleanup")
    for needle in ("gracePeriodSeconds", "0..3600, default 5", "delaySeconds", ">= 0, default 0",
                   "logTimeoutSeconds", "0..86400, default 300", "enum: Archive, Delete", "Archive (default)"):
        assert needle in text, needle
    assert "<no description>" not in text


# ----------------------------------------------------------------------------- the real API server


@pytest.fixture(scope="module")
def real_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from controller.controlplane import BinariesUnavailable, ControlPlane, ensure_binaries

    try:
        bin_dir = ensure_binaries(build=False, echo=False)
    except BinariesUnavailable as exc:
        pytest.skip(f"no control plane: {exc}")
    cp = ControlPlane(workdir=tmp_path_factory.mktemp("cp-tables"), bin_dir=bin_dir, die_with_parent=True)
    cp.start()
    try:
        cp.kubectl("apply", "--server-side", "-f", str(CRD))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/agents.agentcontroller.dev")
        wait_for(lambda: cp.kubectl("explain", "agent.spec.cleanup", check=False).returncode == 0,
                 message="the Agent CRD's OpenAPI schema")
        yield cp
    finally:
        cp.stop()


def copy_to(cp: Any, ns: str, agents: dict[str, dict[str, Any]]) -> None:
    """The same Agents on the real API server, with the status the controller wrote (as an admin:
    no status policy is installed there)."""
    from helpers import Api

    real = Api(cp.url, cp.admin_token, str(cp.ca_file))
    real.create_namespace(ns)
    for name, agent in agents.items():
        real.create_agent(ns, name, agent["spec"])
        real.patch_agent(ns, name, {"status": agent["status"]}, status=True)


def comparable(t: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    """Column definitions, and each row's cells with date cells reduced to 'an age'."""
    defs = t["columnDefinitions"]
    rows = {}
    for row in t["rows"]:
        cells = [("<age>" if AGE.match(str(c)) else c) if d["type"] == "date" and c is not None else c
                 for c, d in zip(row["cells"], defs)]
        rows[row["cells"][0]] = cells
    return defs, rows


def test_tables_match_the_real_api_server(api, ns, cluster, backend_name, controller, real_api, tmp_path):
    if backend_name != "emulator":
        pytest.skip("compares the emulator with the real API server: the emulator backend's test")
    agents = three_agents(api, ns)
    copy_to(real_api, ns, agents)
    path = f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents"
    emulated = table(cluster.url, cluster.admin_token, path)
    real = table(real_api.url, real_api.admin_token, path, real_api.ssl_context())
    e_defs, e_rows = comparable(emulated)
    r_defs, r_rows = comparable(real)
    assert e_defs == r_defs
    assert e_rows == r_rows
    assert [d["name"] for d in r_defs] == ["Name", "Phase", "Reason", "Progress", "Pod", "Cleanup", "Age",
                                           "Node", "Trigger", "Archived", "Finished"]
    assert [d["priority"] for d in r_defs] == [0] * 7 + [1] * 4
    # And kubectl prints them alike.
    emulator_kc = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"), namespace=ns)
    for args in (("get", "agents"), ("get", "agents", "-o", "wide")):
        e_names, e_printed = parse(kubectl(emulator_kc, *args))
        r_names, r_printed = parse(kubectl(real_api.admin_kubeconfig, "-n", ns, *args))
        assert e_names == r_names
        for rows in (e_printed, r_printed):
            for row in rows.values():
                for col in ("AGE", "FINISHED"):
                    if row.get(col):
                        row[col] = "<age>"
        assert e_printed == r_printed


def test_explain_matches_the_real_api_server(cluster, backend_name, real_api, tmp_path):
    if backend_name != "emulator":
        pytest.skip("compares the emulator with the real API server: the emulator backend's test")
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"))
    for field in ("agent.spec.cleanup", "agent.spec", "agent.status.cleanup"):
        assert kubectl(kubeconfig, "explain", field) == kubectl(real_api.admin_kubeconfig, "explain", field), field


WIDGETS = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.tables.example.com"},
    "spec": {
        "group": "tables.example.com", "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [{
            "name": "v1", "served": True, "storage": True,
            "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
            "additionalPrinterColumns": [
                {"name": "S-Int", "type": "string", "jsonPath": ".spec.i"},
                {"name": "S-Bool", "type": "string", "jsonPath": ".spec.b"},
                {"name": "S-Float", "type": "string", "jsonPath": ".spec.f"},
                {"name": "S-Big", "type": "string", "jsonPath": ".spec.big"},
                {"name": "S-Small", "type": "string", "jsonPath": ".spec.small"},
                {"name": "S-Whole", "type": "string", "jsonPath": ".spec.whole"},
                {"name": "S-Map", "type": "string", "jsonPath": ".spec.m"},
                {"name": "S-List", "type": "string", "jsonPath": ".spec.l"},
                {"name": "S-Missing", "type": "string", "jsonPath": ".spec.nothing"},
                {"name": "I-Float", "type": "integer", "jsonPath": ".spec.f"},
                {"name": "I-Str", "type": "integer", "jsonPath": ".spec.s"},
                {"name": "N-Int", "type": "number", "jsonPath": ".spec.i"},
                {"name": "B-Str", "type": "boolean", "jsonPath": ".spec.s"},
                {"name": "D-Bad", "type": "date", "jsonPath": ".spec.s"},
                {"name": "Described", "type": "string", "jsonPath": ".spec.s", "description": "A column.",
                 "priority": 1},
            ],
        }],
    },
}
WIDGET_SPEC = {"i": 42, "b": True, "f": 0.5, "big": 1234567.5, "small": 0.00001, "whole": 100.0, "s": "not-a-date",
               "m": {"b": 1, "a": "x"}, "l": ["p", 2]}


def test_crd_cells_of_every_type_match_the_real_api_server(cluster, backend_name, real_api, api, ns):
    if backend_name != "emulator":
        pytest.skip("compares the emulator with the real API server: the emulator backend's test")
    """Printer columns of every type over values of every type: the emulator's cells are the real
    tableconvertor's (a string column prints any value, as kubectl's JSONPath does)."""
    from helpers import Api

    real = Api(real_api.url, real_api.admin_token, str(real_api.ca_file))
    real.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGETS)
    api.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", WIDGETS)
    path = f"/apis/tables.example.com/v1/namespaces/{ns}/widgets"
    body = {"apiVersion": "tables.example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": WIDGET_SPEC}
    real.create_namespace(ns)
    wait_for(lambda: real.call("POST", path, body), message="the Widget CRD served")
    wait_for(lambda: api.call("POST", path, body), message="the Widget CRD served (emulator)")
    emulated = table(cluster.url, cluster.admin_token, path)
    served = table(real_api.url, real_api.admin_token, path, real_api.ssl_context())
    assert emulated["columnDefinitions"] == served["columnDefinitions"]
    e_cells, r_cells = emulated["rows"][0]["cells"], served["rows"][0]["cells"]
    assert e_cells == r_cells, json.dumps(list(zip([d["name"] for d in served["columnDefinitions"]], e_cells, r_cells)))


def test_2_a_large_prompt_through_kubectl_create_and_server_side_apply(api, ns, cluster, backend_name, tmp_path):
    """A 400 KiB prompt (the CRD allows 512 KiB): client-side `kubectl apply` is refused by the API
    server — it copies the object into the last-applied annotation (256 KiB limit), as the README
    says —, while `kubectl create` and `kubectl apply --server-side` work."""
    if backend_name != "control-plane":
        pytest.skip("the annotation size limit is the real API server's (the control-plane backend)")
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"), namespace=ns)
    prompt = "p" * (400 * 1024)

    def manifest(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                                        "metadata": {"name": name}, "spec": {"image": "agent:1", "prompt": prompt}}))
        return path

    binary = kubectl_binary()
    if binary is None:
        pytest.skip("kubectl not found")
    client_side = subprocess.run([binary, "--kubeconfig", kubeconfig, "apply", "-f", str(manifest("client"))],
                                 capture_output=True, text=True, timeout=60)
    assert client_side.returncode != 0 and "Too long" in client_side.stderr, client_side.stderr
    kubectl(kubeconfig, "create", "-f", str(manifest("created")))
    kubectl(kubeconfig, "apply", "--server-side", "-f", str(manifest("server-side")))
    for name in ("created", "server-side"):
        assert api.agent(ns, name)["spec"]["prompt"] == prompt
