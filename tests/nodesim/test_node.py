"""The node simulator, seen through the API as a user sees it — each test on both backends.

``backend`` is the emulator (DevCluster) or a real kube-apiserver v1.37.2 with a simulated node
(kubectl and pods/log then go API server -> the simulator's kubelet API over HTTPS).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from typing import Any

import pytest
from ns_helpers import A, Backend, kubectl_bin, script, wait_for

from controller.nodesim import generate_output

TS = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) (.*)$")


def status(backend: Backend, ns: str, name: str) -> dict[str, Any]:
    p = backend.pod(ns, name)
    assert p is not None, f"pod {ns}/{name} is gone"
    return p.get("status") or {}


def cstatus(backend: Backend, ns: str, name: str, i: int = 0) -> dict[str, Any]:
    return (status(backend, ns, name).get("containerStatuses") or [{}])[i]


class Follower:
    """``kubectl logs -f`` in the background, collecting bytes."""

    def __init__(self, backend: Backend, *args: str) -> None:
        self.proc = subprocess.Popen([kubectl_bin(), "--kubeconfig", backend.kubeconfig, "logs", "-f", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.got = bytearray()
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        while True:
            chunk = self.proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                return
            self.got.extend(chunk)

    def done(self) -> bool:
        return self.proc.poll() is not None and not self.t.is_alive()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


# --------------------------------------------------------------------------- status and logs


def test_script_runs_and_status_is_what_a_kubelet_writes(backend: Backend, ns: str) -> None:
    blob = bytes(range(256))
    steps = [{"log": "hello\n"}, {"logB64": base64.b64encode(blob).decode()}, {"log": "oops\n", "stream": "stderr"},
             {"sleep": 0.2}, {"exit": 3}]
    backend.create_pod(ns, "p", annotations={A + "script": script(steps)})
    wait_for(lambda: backend.phase(ns, "p") == "Failed", message="Failed")
    pod = backend.pod(ns, "p")
    assert pod is not None
    st = pod["status"]
    assert pod["spec"]["nodeName"] == backend.node
    conds = {c["type"]: c for c in st["conditions"]}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("False", "PodFailed")
    assert (conds["ContainersReady"]["status"], conds["ContainersReady"]["reason"]) == ("False", "PodFailed")
    for t in ("Initialized", "PodScheduled", "PodReadyToStartContainers"):
        assert conds[t]["status"] == "True", t
    cs = st["containerStatuses"][0]
    term = cs["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    assert term["startedAt"] and term["finishedAt"] and term["containerID"].startswith("containerd://")
    assert cs["containerID"] == term["containerID"]
    assert (cs["restartCount"], cs["ready"], cs["started"], cs["lastState"]) == (0, False, False, {})
    assert cs["image"] == "docker.io/library/busybox:1.36"
    assert cs["imageID"].startswith("docker.io/library/busybox@sha256:")
    assert st["startTime"] and st["podIP"] and st["hostIP"] and st["qosClass"] == "BestEffort"
    # The runtime writes whole lines: stdout's unterminated tail comes out after stderr's line.
    served = b"hello\n" + blob[:11] + b"oops\n" + blob[11:]
    out = backend.kubectl("logs", "p", "-n", ns).stdout
    assert out == served == backend.sim.served_log(ns, "p")
    assert backend.sim.written_output(ns, "p") == b"hello\n" + blob + b"oops\n"
    assert backend.sim.written_output(ns, "p", stream="stderr") == b"oops\n"


def test_running_pod_is_ready_and_a_follow_streams_until_exit(backend: Backend, ns: str) -> None:
    backend.create_pod(ns, "f", annotations={A + "script": script([{"log": "one\ntwo\n"}, {"sleep": 3600}])})
    wait_for(lambda: backend.phase(ns, "f") == "Running")
    st = status(backend, ns, "f")
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    assert cstatus(backend, ns, "f")["state"]["running"]["startedAt"]
    wait_for(lambda: backend.sim.served_log(ns, "f") == b"one\ntwo\n")
    f = Follower(backend, "f", "-n", ns)
    try:
        wait_for(lambda: bytes(f.got) == b"one\ntwo\n", message="followed lines")
        backend.sim.append_log(ns, "f", "c", b"three\n")
        wait_for(lambda: bytes(f.got) == b"one\ntwo\nthree\n", message="a new line")
        assert f.proc.poll() is None
        backend.sim.exit(ns, "f", 0)
        wait_for(f.done, message="the stream ends with the container")
        assert f.proc.returncode == 0 and bytes(f.got) == b"one\ntwo\nthree\n"
    finally:
        f.stop()
    lines = backend.kubectl("logs", "f", "-n", ns, "--timestamps").stdout.splitlines()
    stamps = []
    for line in lines:
        m = TS.match(line)
        assert m, line
        stamps.append(m.group(1).decode())
    assert [TS.match(x).group(2) for x in lines] == [b"one", b"two", b"three"]  # type: ignore[union-attr]
    assert backend.kubectl("logs", "f", "-n", ns, "--tail=1").stdout == b"three\n"
    assert backend.kubectl("logs", "f", "-n", ns, "--limit-bytes=5").stdout == b"one\nt"
    # sinceTime goes to the kubelet with second precision: every line of that second and later
    since = stamps[2][:19] + "Z"
    code, data = backend.log(ns, "f", f"sinceTime={since}&timestamps=true")
    assert code == 200
    got = [TS.match(x) for x in data.splitlines()]
    assert got and all(m is not None and m.group(1).decode()[:19] >= since[:19] for m in got)
    assert got[-1].group(2) == b"three"  # type: ignore[union-attr]
    assert backend.log(ns, "f", "sinceTime=2099-01-01T00:00:00Z") == (200, b"")
    assert backend.log(ns, "f", "sinceSeconds=3600") == (200, b"one\ntwo\nthree\n")


def test_log_option_errors_are_the_api_servers(backend: Backend, ns: str) -> None:
    backend.create_pod(ns, "v", annotations={A + "script": script([{"log": "x\n"}])})
    backend.create_pod(ns, "two", containers=[{"name": "a", "image": "x:1"}, {"name": "b", "image": "y:1"}])
    wait_for(lambda: backend.phase(ns, "v") == "Running" and backend.phase(ns, "two") == "Running")
    cases = [
        ("tailLines=-2", 422, 'PodLogOptions "v" is invalid: tailLines: Invalid value: -2: must be greater than or equal to 0'),
        ("limitBytes=0", 422, 'PodLogOptions "v" is invalid: limitBytes: Invalid value: 0: must be greater than 0'),
        ("sinceSeconds=0", 422, 'PodLogOptions "v" is invalid: sinceSeconds: Invalid value: 0: must be greater than 0'),
        ("sinceSeconds=5&sinceTime=2020-01-01T00:00:00Z", 422,
         'PodLogOptions "v" is invalid: []: Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified'),
        ("stream=Stdout", 422, 'PodLogOptions "v" is invalid: stream: Forbidden: may not be specified'),
        ("sinceTime=garbage", 400, 'parsing time "garbage" as "2006-01-02T15:04:05Z07:00": cannot parse "garbage" as "2006"'),
        ("tailLines=x", 400, 'strconv.ParseInt: parsing "x": invalid syntax'),
        ("container=zz", 400, "container zz is not valid for pod v"),
        ("previous=true", 400, 'previous terminated container "c" in pod "v" not found'),
    ]
    for query, code, message in cases:
        got_code, body = backend.log(ns, "v", query)
        assert (got_code, json.loads(body)["message"]) == (code, message), query
    code, body = backend.log(ns, "two")
    assert (code, json.loads(body)["message"]) == (400, "a container name must be specified for pod two, choose one of: [a b]")


def test_deterministic_write_step(backend: Backend, ns: str) -> None:
    steps = [{"write": {"bytes": 1 << 20, "lineBytes": 80, "chunkBytes": 4096, "seed": "w"}},
             {"write": {"bytes": 1000, "lineBytes": 0}, "stream": "stderr"}, {"exit": 0}]
    backend.create_pod(ns, "w", annotations={A + "script": script(steps)})
    wait_for(lambda: backend.phase(ns, "w") == "Succeeded")
    out = generate_output(1 << 20, line_bytes=80, seed="w")
    err = generate_output(1000, line_bytes=0)
    assert backend.sim.written_output(ns, "w", stream="stdout") == out
    assert backend.sim.written_output(ns, "w", stream="stderr") == err
    assert backend.sim.written_output(ns, "w") == out + err
    assert backend.kubectl("logs", "w", "-n", ns).stdout == out + err


# --------------------------------------------------------------------------- rotation, GC, broken streams


@pytest.mark.parametrize("mode", ["stall", "end", "reopen"])
def test_rotation_serves_the_current_file_and_a_follow_meets_it(backend: Backend, ns: str, mode: str) -> None:
    ann = {A + "script": script([{"write": {"bytes": 10_000}}, {"sleep": 3600}]), A + "log-max-size": "64Ki",
           A + "follow-at-rotation": mode}
    backend.create_pod(ns, "r", annotations=ann)
    first = generate_output(10_000)
    wait_for(lambda: backend.sim.served_log(ns, "r") == first)
    f = Follower(backend, "r", "-n", ns)
    try:
        wait_for(lambda: bytes(f.got) == first, message="the first lines followed")
        more = generate_output(300_000, seed="more-")
        backend.sim.append_log(ns, "r", "c", more)
        everything = first + more
        assert backend.sim.served_log(ns, "r") == everything
        current = backend.sim.current_log(ns, "r")
        assert 0 < len(current) < 64 * 1024 and everything.endswith(current)
        assert backend.kubectl("logs", "r", "-n", ns).stdout == current
        if mode == "reopen":
            wait_for(lambda: bytes(f.got) == everything, message="the stream goes on with the new file")
        elif mode == "end":
            wait_for(f.done, message="the stream ends at the rotation")
        else:
            wait_for(lambda: len(f.got) > len(first), message="the rest of the rotated file")
        got = bytes(f.got)
        if mode != "reopen":
            # what was left of the file that rotated away, then nothing
            assert everything.startswith(got) and len(got) < len(everything) - len(current)
            assert got.endswith(b"\n")
        assert (f.proc.poll() is None) == (mode != "end")
        backend.sim.exit(ns, "r", 0)
        wait_for(f.done, message="the stream ends with the container")
        assert bytes(f.got) == got
    finally:
        f.stop()


def test_garbage_collected_container_answers_200_with_the_kubelet_error(backend: Backend, ns: str) -> None:
    ann = {A + "script": script([{"log": "the agent's output\n"}, {"exit": 0}]), A + "gc-after-exit": "0"}
    backend.create_pod(ns, "g", annotations=ann)
    wait_for(lambda: backend.phase(ns, "g") == "Succeeded")
    cid = cstatus(backend, ns, "g")["containerID"]
    text = f"unable to retrieve container logs for {cid}".encode()
    wait_for(lambda: backend.log(ns, "g") == (200, text), message="the kubelet's error as the body")
    p = backend.kubectl("logs", "g", "-n", ns)
    assert (p.returncode, p.stdout) == (0, text)
    assert backend.sim.served_log(ns, "g") == b"the agent's output\n"


def test_log_stream_cut_after_n_bytes_looks_complete(backend: Backend, ns: str) -> None:
    ann = {A + "script": script([{"write": 100_000}, {"sleep": 3600}]), A + "break-log-stream-after-bytes": "5000"}
    backend.create_pod(ns, "b", annotations=ann)
    full = generate_output(100_000)
    wait_for(lambda: backend.sim.served_log(ns, "b") == full)
    f = Follower(backend, "b", "-n", ns)
    try:
        wait_for(f.done, message="the cut stream ends")
        assert f.proc.returncode == 0 and bytes(f.got) == full[:5000]
    finally:
        f.stop()
    assert backend.kubectl("logs", "b", "-n", ns).stdout == full      # only the first stream is cut


# --------------------------------------------------------------------------- deletion, loss, eviction


def test_graceful_deletion_sigterm_grace_period_kill(backend: Backend, ns: str) -> None:
    keep = ["example.com/keep"]
    pods = {
        "term": {A + "script": script([{"log": "working\n"}], on_term=[{"log": "got SIGTERM\n"}, {"exit": 0}])},
        "stubborn": {A + "script": script([{"log": "working\n"}]), A + "ignore-term": "true"},
        "plain": {},
    }
    for name, ann in pods.items():
        backend.create_pod(ns, name, annotations=ann, terminationGracePeriodSeconds=2)
        backend.json("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": {"finalizers": keep}},
                     "application/merge-patch+json")
    wait_for(lambda: all(backend.phase(ns, n) == "Running" for n in pods))
    for name in pods:
        backend.json("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}")
    wait_for(lambda: all(backend.phase(ns, n) in ("Succeeded", "Failed") for n in pods), message="terminal")
    term = {n: cstatus(backend, ns, n)["state"]["terminated"] for n in pods}
    assert (term["term"]["exitCode"], backend.phase(ns, "term")) == (0, "Succeeded")
    assert (term["plain"]["exitCode"], term["plain"]["reason"]) == (143, "Error")
    assert (term["stubborn"]["exitCode"], term["stubborn"]["reason"]) == (137, "Error")
    # killed when the grace period ended (deletionTimestamp = the DELETE + the grace period)
    stubborn = backend.pod(ns, "stubborn")
    assert stubborn is not None
    assert term["stubborn"]["finishedAt"] >= _minus_one(stubborn["metadata"]["deletionTimestamp"])
    assert backend.sim.served_log(ns, "term") == b"working\ngot SIGTERM\n"
    for name in pods:
        backend.json("PATCH", f"/api/v1/namespaces/{ns}/pods/{name}", {"metadata": {"finalizers": None}},
                     "application/merge-patch+json")
    wait_for(lambda: all(backend.pod(ns, n) is None for n in pods), message="gone after the kubelet's delete")


def _minus_one(ts: str) -> str:
    import datetime as dt

    t = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ") - dt.timedelta(seconds=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_lost_node_refuses_logs_and_never_finishes_a_deletion(backend: Backend, ns: str, lossy: Any) -> None:
    ann = {A + "script": script([{"log": "before\n"}, {"sleep": 3600}])}
    lossy(ns, "l", annotations=ann, terminationGracePeriodSeconds=1)
    wait_for(lambda: backend.phase(ns, "l") == "Running")
    wait_for(lambda: backend.log(ns, "l") == (200, b"before\n"))
    backend.lose(ns, "l")
    code, body = wait_for(lambda: (r := backend.log(ns, "l"))[0] == 500 and r, message="refused")
    msg = json.loads(body)["message"]
    assert "containerLogs/" + ns + "/l/c" in msg and msg.endswith("connect: connection refused")
    assert "reason" not in json.loads(body)
    backend.json("DELETE", f"/api/v1/namespaces/{ns}/pods/l")
    if backend.name == "real":
        node = backend.lossy_node  # type: ignore[attr-defined]
        lease = backend.json("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
        # the node lifecycle controller notices the silence (node-monitor-grace-period 20 s here)
        wait_for(lambda: {c["type"]: c["status"] for c in backend.json("GET", f"/api/v1/nodes/{node}")["status"]
                          ["conditions"]}["Ready"] == "Unknown", timeout=120, message="node Ready Unknown")
        again = backend.json("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")
        assert again["spec"]["renewTime"] == lease["spec"]["renewTime"]
    else:
        time.sleep(3)       # well past the 1 s grace period
    p = backend.pod(ns, "l")
    assert p is not None and p["metadata"]["deletionTimestamp"] and p["status"]["phase"] == "Running"
    backend.json("DELETE", f"/api/v1/namespaces/{ns}/pods/l", {"gracePeriodSeconds": 0})
    wait_for(lambda: backend.pod(ns, "l") is None, message="force-deleted")


def test_lose_node_annotation(backend: Backend, ns: str, lossy: Any) -> None:
    ann = {A + "script": script([{"log": "x\n"}, {"sleep": 3600}]), A + "lose-node-after-seconds": "1"}
    lossy(ns, "la", annotations=ann)
    wait_for(lambda: (r := backend.log(ns, "la"))[0] == 500 and b"connection refused" in r[1], message="node lost")


def test_eviction_annotation(backend: Backend, ns: str) -> None:
    ann = {A + "script": script([{"sleep": 3600}]), A + "evict-after-seconds": "0.5",
           A + "evict-message": "The node was low on resource: ephemeral-storage. "}
    backend.create_pod(ns, "ev", annotations=ann)
    wait_for(lambda: backend.phase(ns, "ev") == "Failed")
    st = status(backend, ns, "ev")
    assert (st["reason"], st["message"]) == ("Evicted", "The node was low on resource: ephemeral-storage. ")
    dt = {c["type"]: c for c in st["conditions"]}["DisruptionTarget"]
    assert (dt["status"], dt["reason"]) == ("True", "TerminationByKubelet")
    assert st["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137


# --------------------------------------------------------------------------- waiting, volumes, restarts


def test_waiting_reasons_never_clear(backend: Backend, ns: str) -> None:
    backend.create_pod(ns, "cfg", annotations={A + "waiting-reason": "CreateContainerConfigError",
                                              A + "waiting-message": 'secret "creds" not found'})
    backend.create_pod(ns, "img", containers=[{"name": "c", "image": "sim.invalid/agent:1"}])
    wait_for(lambda: cstatus(backend, ns, "cfg").get("state", {}).get("waiting", {}).get("reason")
             == "CreateContainerConfigError")
    st = status(backend, ns, "cfg")
    assert st["phase"] == "Pending"
    assert st["containerStatuses"][0]["state"]["waiting"]["message"] == 'secret "creds" not found'
    ready = {c["type"]: c for c in st["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == (
        "False", "ContainersNotReady", "containers with unready status: [c]")
    p = backend.kubectl("logs", "cfg", "-n", ns, check=False)
    assert p.returncode != 0
    assert b'container "c" in pod "cfg" is waiting to start: CreateContainerConfigError' in p.stderr
    wait_for(lambda: cstatus(backend, ns, "img").get("state", {}).get("waiting", {}).get("reason") == "ImagePullBackOff")
    w = cstatus(backend, ns, "img")["state"]["waiting"]
    assert w["message"] == 'Back-off pulling image "sim.invalid/agent:1"'
    code, body = backend.log(ns, "img")
    assert (code, json.loads(body)["message"]) == (
        400, 'container "c" in pod "img" is waiting to start: trying and failing to pull image')
    assert backend.phase(ns, "img") == "Pending"


def test_configmap_volume_waits_for_the_configmap(backend: Backend, ns: str) -> None:
    backend.create_pod(ns, "mnt", annotations={A + "script": script([{"log": "up\n"}, {"sleep": 3600}])},
                       volumes=[{"name": "prompt", "configMap": {"name": "later"}}],
                       containers=[{"name": "c", "image": "busybox:1.36",
                                    "volumeMounts": [{"name": "prompt", "mountPath": "/p"}]}])
    wait_for(lambda: cstatus(backend, ns, "mnt").get("state", {}).get("waiting", {}).get("reason") == "ContainerCreating")
    assert backend.phase(ns, "mnt") == "Pending"
    backend.json("POST", f"/api/v1/namespaces/{ns}/configmaps",
                 {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later"}, "data": {"k": "v"}})
    wait_for(lambda: backend.phase(ns, "mnt") == "Running")


def test_on_failure_restarts_and_previous_log(backend: Backend, ns: str) -> None:
    backend.create_pod(ns, "rs", annotations={A + "script": script([{"log": "attempt\n"}, {"exit": 1}])},
                       restartPolicy="OnFailure")
    wait_for(lambda: cstatus(backend, ns, "rs").get("restartCount", 0) >= 1)
    cs = cstatus(backend, ns, "rs")
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert backend.phase(ns, "rs") == "Running"
    assert backend.kubectl("logs", "rs", "-n", ns, "--previous").stdout == b"attempt\n"
    wait_for(lambda: cstatus(backend, ns, "rs").get("state", {}).get("waiting", {}).get("reason") == "CrashLoopBackOff")
    msg = cstatus(backend, ns, "rs")["state"]["waiting"]["message"]
    assert re.fullmatch(r"back-off \S+ restarting failed container=c pod=rs_" + ns + r"\(\S+\)", msg), msg


# --------------------------------------------------------------------------- local processes


def test_local_process_runs_with_the_pods_env_and_token(backend: Backend, ns: str) -> None:
    cmd = ('echo hi; echo "$MY_POD $MY_NS $GREETING"; cat "$AGENT_SERVICEACCOUNT_DIR/namespace"; echo; '
           'test -s "$AGENT_SERVICEACCOUNT_DIR/token" && echo token; cat "$PROMPT"; echo; echo err >&2; exit 3')
    env = [{"name": "MY_POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "greeting"}}},
           {"name": "PROMPT", "value": "/var/run/agent/prompt.txt"}]
    backend.json("POST", f"/api/v1/namespaces/{ns}/configmaps",
                 {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
                  "data": {"greeting": "hello", "prompt.txt": "Find the bug."}})
    backend.create_pod(ns, "lp", volumes=[{"name": "prompt", "configMap": {"name": "cm", "items": [
                           {"key": "prompt.txt", "path": "prompt.txt"}]}}],
                       containers=[{"name": "c", "image": "sim.local/shell", "command": ["sh", "-c", cmd], "env": env,
                                    "volumeMounts": [{"name": "prompt", "mountPath": "/var/run/agent"}]}])
    wait_for(lambda: backend.phase(ns, "lp") == "Failed")
    term = cstatus(backend, ns, "lp")["state"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    expected = f"hi\nlp {ns} hello\n{ns}\ntoken\nFind the bug.\nerr\n".encode()
    assert backend.kubectl("logs", "lp", "-n", ns).stdout == expected == backend.sim.written_output(ns, "lp")


WHOAMI = r"""
import json, os, ssl, urllib.request
d = os.environ["AGENT_SERVICEACCOUNT_DIR"]
token = open(os.path.join(d, "token")).read()
ctx = ssl.create_default_context(cafile=os.path.join(d, "ca.crt"))
url = "https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews" % (
    os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"])
req = urllib.request.Request(url, method="POST", data=json.dumps(
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}).encode())
req.add_header("Authorization", "Bearer " + token)
req.add_header("Content-Type", "application/json")
info = json.load(urllib.request.urlopen(req, context=ctx))["status"]["userInfo"]
print(info["username"])
print(",".join(info.get("extra", {}).get("authentication.kubernetes.io/pod-name", [])))
"""


def test_local_process_token_authenticates_as_the_pods_service_account(backend: Backend, ns: str) -> None:
    import sys

    backend.create_pod(ns, "who", containers=[{"name": "c", "image": "sim.local/python",
                                               "command": [sys.executable, "-c", WHOAMI]}])
    wait_for(lambda: backend.phase(ns, "who") in ("Succeeded", "Failed"))
    out = backend.sim.written_output(ns, "who").decode()
    assert backend.phase(ns, "who") == "Succeeded", out
    lines = out.splitlines()
    assert lines[0] == f"system:serviceaccount:{ns}:default"
    if backend.name == "real":
        assert lines[1] == "who"         # a TokenRequest bound to the pod


def test_local_process_sigterm_goes_to_the_process_group(backend: Backend, ns: str) -> None:
    cmd = "trap 'echo got TERM; exit 7' TERM; echo ready; while true; do sleep 0.1; done"
    backend.create_pod(ns, "sig", containers=[{"name": "c", "image": "sim.local/shell", "command": ["sh", "-c", cmd]}],
                       terminationGracePeriodSeconds=10)
    backend.json("PATCH", f"/api/v1/namespaces/{ns}/pods/sig", {"metadata": {"finalizers": ["example.com/keep"]}},
                 "application/merge-patch+json")
    wait_for(lambda: backend.sim.written_output(ns, "sig") == b"ready\n")
    backend.json("DELETE", f"/api/v1/namespaces/{ns}/pods/sig")
    wait_for(lambda: backend.phase(ns, "sig") == "Failed")
    assert cstatus(backend, ns, "sig")["state"]["terminated"]["exitCode"] == 7
    assert backend.sim.written_output(ns, "sig") == b"ready\ngot TERM\n"
    backend.json("PATCH", f"/api/v1/namespaces/{ns}/pods/sig", {"metadata": {"finalizers": None}},
                 "application/merge-patch+json")


def test_agentctl_run_in_local_process_mode_reports_to_its_agent(backend: Backend, ns: str) -> None:
    import shutil

    root = __import__("ns_helpers").ROOT
    if backend.name == "real":
        backend.kubectl("apply", "--server-side", "-f", str(root / "manifests" / "crd.yaml"))
        backend.kubectl("wait", "--for=condition=Established", "crd/agents.agentcontroller.dev", "--timeout=60s")
    agentctl = shutil.which("agentctl")
    assert agentctl, "agentctl is installed with the package"
    agent = backend.json("POST", f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents",
                         {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "a1"},
                          "spec": {"image": "sim.local/agent"}})
    from controller import children

    for obj in (children.service_account(agent), children.role(agent), children.role_binding(agent)):
        group = "rbac.authorization.k8s.io/v1" if "rbac" in obj["apiVersion"] else "v1"
        kind = {"ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings"}[obj["kind"]]
        base = "/api/v1" if group == "v1" else f"/apis/{group}"
        backend.json("POST", f"{base}/namespaces/{ns}/{kind}", obj)
    pod = children.pod(agent)
    pod["spec"]["containers"][0]["command"] = [agentctl, "run", "--", "sh", "-c", "echo hi; exit 3"]
    pod["spec"].pop("securityContext", None)
    backend.json("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    wait_for(lambda: backend.phase(ns, pod["metadata"]["name"]) == "Failed", timeout=90)
    out = backend.sim.written_output(ns, pod["metadata"]["name"])
    assert out.startswith(b"hi\n"), out
    st = backend.json("GET", f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents/a1")["status"]
    assert st["phase"] == "Failed", (st, out)
    assert cstatus(backend, ns, pod["metadata"]["name"])["state"]["terminated"]["exitCode"] == 3


# --------------------------------------------------------------------------- the annotation set


def test_annotation_shortcuts_and_per_container_scripts(backend: Backend, ns: str) -> None:
    backend.create_pod(ns, "ex", annotations={A + "exit-code": "5", A + "exit-after-seconds": "0.2"})
    two = [{"name": "sidecar", "image": "proxy:1"}, {"name": "agent", "image": "agent:1"}]
    backend.create_pod(ns, "multi", containers=two, annotations={
        A + "default-container": "agent",
        A + "script": script([{"log": "agent\n"}, {"exit": 0}]),
        A + "script.sidecar": script([{"log": "sidecar\n"}, {"exit": 0}]),
    })
    backend.create_pod(ns, "bad", annotations={A + "script": "{not json", A + "lgo-max-size": "1Mi"})
    wait_for(lambda: backend.phase(ns, "ex") == "Failed")
    assert cstatus(backend, ns, "ex")["state"]["terminated"]["exitCode"] == 5
    wait_for(lambda: backend.phase(ns, "multi") == "Succeeded")
    assert backend.kubectl("logs", "multi", "-n", ns, "-c", "sidecar").stdout == b"sidecar\n"
    assert backend.kubectl("logs", "multi", "-n", ns, "-c", "agent").stdout == b"agent\n"
    wait_for(lambda: cstatus(backend, ns, "bad").get("state", {}).get("waiting", {}).get("reason")
             == "CreateContainerConfigError")
    msg = cstatus(backend, ns, "bad")["state"]["waiting"]["message"]
    assert msg.startswith(A + "script: invalid JSON") and A + "lgo-max-size: unknown annotation" in msg


def test_init_containers_run_first_and_the_start_delay(backend: Backend, ns: str) -> None:
    backend.create_pod(ns, "init", annotations={
        A + "start-delay-seconds": "0.3",
        A + "script.setup": script([{"log": "setting up\n"}, {"sleep": 0.3}, {"exit": 0}]),
        A + "script": script([{"log": "main\n"}, {"exit": 0}]),
    }, initContainers=[{"name": "setup", "image": "busybox:1.36"}])
    wait_for(lambda: (status(backend, ns, "init").get("initContainerStatuses") or [{}])[0]
             .get("state", {}).get("running"), message="the init container runs")
    st = status(backend, ns, "init")
    assert st["phase"] == "Pending"
    assert st["containerStatuses"][0]["state"]["waiting"]["reason"] == "PodInitializing"
    init = {c["type"]: c for c in st["conditions"]}["Initialized"]
    assert (init["status"], init["reason"]) == ("False", "ContainersNotInitialized")
    wait_for(lambda: backend.phase(ns, "init") == "Succeeded")
    st = status(backend, ns, "init")
    assert st["initContainerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert backend.kubectl("logs", "init", "-n", ns, "-c", "setup").stdout == b"setting up\n"
    assert backend.kubectl("logs", "init", "-n", ns).stdout == b"main\n"


def test_report_step_patches_the_agent_status_with_the_pods_token(backend: Backend, ns: str) -> None:
    root = __import__("ns_helpers").ROOT
    if backend.name == "real":
        backend.kubectl("apply", "--server-side", "-f", str(root / "manifests" / "crd.yaml"))
        backend.kubectl("wait", "--for=condition=Established", "crd/agents.agentcontroller.dev", "--timeout=60s")
    agent = backend.json("POST", f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents",
                         {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "rep"},
                          "spec": {"image": "busybox:1.36"}})
    from controller import children

    for obj in (children.service_account(agent), children.role(agent), children.role_binding(agent)):
        kind = {"ServiceAccount": "serviceaccounts", "Role": "roles", "RoleBinding": "rolebindings"}[obj["kind"]]
        base = "/api/v1" if obj["apiVersion"] == "v1" else f"/apis/{obj['apiVersion']}"
        backend.json("POST", f"{base}/namespaces/{ns}/{kind}", obj)
    pod = children.pod(agent)
    pod["metadata"]["annotations"] = {A + "script": script([{"report": {"phase": "Working", "progress": 40}},
                                                            {"log": "reported\n"}, {"sleep": 3600}])}
    backend.json("POST", f"/api/v1/namespaces/{ns}/pods", pod)
    wait_for(lambda: backend.sim.served_log(ns, "rep") == b"reported\n")
    st = backend.json("GET", f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents/rep")["status"]
    assert (st["phase"], st["progress"]) == ("Working", 40)
    rec = [r for r in backend.sim.reports if r["pod"] == "rep" and r["namespace"] == ns]
    assert [r["code"] for r in rec] == [200]
