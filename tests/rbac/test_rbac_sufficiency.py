"""RBAC is exactly sufficient (issue #4), on both backends (issue #11, #15).

The chart's ClusterRole (`helm template`, default values) is given to the controller's identity,
and the real controller runs authenticated as it. One compact scenario exercises, through the API
as a user would, everything the core and safety-net scenarios need:

- `done`:  reports Completed while its pod runs (archive with grace-period lines, pod delete,
           prompt + credential deletes, verification lists, a CleanedUp Event);
- `exit`:  its pod exits (code 1);
- `kill`:  killed with spec.terminate;
- `del`:   the Agent is deleted (the finalizer holds it until its cleanup archived everything);
- `ttl`:   ttlSecondsAfterFinished: 0 (the controller deletes the Agent);
- `retry`: its pod creates are refused by a quota (on the real control plane a ResourceQuota of 0
           pods; on the emulator, which has no quota admission, kube-apiserver's refusal injected)
           until its QuotaExceeded Event has counted two refusals (a repeat PATCHes the earlier
           Event), so the retry finds its ServiceAccount, Role, RoleBinding and ConfigMap already
           there (409, then a GET to see that they are its own);
- a sweep that archives and reaps an orphan pod and reaps an orphan ConfigMap.

It passes when every agent reaches cleanup Succeeded with verifiedNoLeaks (or is gone where that
is expected), each got its CleanedUp Event, and nothing managed is left.

Test A: with the full rendered ClusterRole the scenario passes.
Test B: for every (apiGroup, resource, verb) the ClusterRole grants, the same ClusterRole minus
that one verb makes the scenario fail. RBAC is a union of grants, so removing a whole rule (or
more) denies at least what removing one of its verbs denies: no rule can be dropped either.
Test C (control plane): the controller's ServiceAccount, bound to the chart's RBAC, can do nothing
outside those rules (SelfSubjectAccessReview as it: no Secrets, no exec, no attach, no
impersonation, no RBAC escalation, no nodes...).

The backends:

- emulator (default): every run gets its own emulator, with the chart's ServiceAccount, binding and
  status ValidatingAdmissionPolicy, and the controller in all-namespaces mode (what the ClusterRole
  is for; a controller in that mode would otherwise pick up what a previous, deliberately broken
  run left behind). The emulator counts the requests of each user, so test A also checks that the
  full role denied the controller nothing.
- control plane (`--backend control-plane`): one real kube-apiserver, where every run gets an
  identity of its own: a ServiceAccount `rbac-<run>` in the controller's namespace, bound by a
  ClusterRoleBinding to a ClusterRole with that run's rules, the chart's status policy re-bound to
  that ServiceAccount for the run's two namespaces (labelled with the run and Pod Security
  `restricted`), and the controller watching those two namespaces. The grants checked are the
  same; kube-apiserver decides.

The broken runs go a few at a time, each in a process of its own (see _broken_run for why not
threads). A broken run stops at the first symptom a user would see: a cleanup in state Retrying, a
Warning Event saying "forbidden", a kopf handler whose progress annotation on the Agent says
"forbidden" (it is retried, and with unchanged RBAC fails again, forever), a "forbidden" in the
controller's log, the sweep failing, or the scenario's time budget running out; the full role
passes well within that budget (and logs no "forbidden"). A quota's refusal ("forbidden: exceeded
quota") is the scenario's own and not a symptom.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import multiprocessing
import time
import warnings
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from helpers import Api, HttpError, leftovers, script, wait_for

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crd.yaml"
MANAGED = "app.kubernetes.io/managed-by=agent-controller"

# The time budget of one scenario run. The full role needs a few seconds (asserted in test A, so
# a budget that became too short shows up there, not as broken runs that pass test B for the
# wrong reason).
BUDGET = 15.0
FULL_ROLE_MAX_SECONDS = BUDGET / 2
PARALLEL = 4            # broken runs at once (each in its own process and emulator)
POLL = 0.1



class Broken(AssertionError):
    """The scenario failed: something the controller must do did not happen."""


# ------------------------------------------------------------------------------ the chart


def chart_rbac() -> dict[str, Any]:
    """ServiceAccount, ClusterRole, ClusterRoleBinding and the status ValidatingAdmissionPolicy
    (+ binding) of `helm template` with default values."""
    from shipping.shiputil import FULLNAME, one, render

    docs = render()
    # (the ship endpoint's ClusterRole "<fullname>-ship", TokenReview only, is not what this proves)
    return {kind: one(docs, kind, FULLNAME if kind.startswith("ClusterRole") else None)
            for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                               "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")}


Grant = tuple[str, str, str]     # (apiGroup, resource, verb)


def grants(rules: list[dict[str, Any]]) -> list[Grant]:
    """Every (apiGroup, resource, verb) the rules allow, in rule order. The chart's rules are plain
    resource rules (asserted), so the rules are exactly the union of these grants."""
    out: list[Grant] = []
    for rule in rules:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        for g, r, v in itertools.product(rule["apiGroups"], rule["resources"], rule["verbs"]):
            if (g, r, v) not in out:
                out.append((g, r, v))
    return out


def rules_without(rules: list[dict[str, Any]], removed: Grant) -> list[dict[str, Any]]:
    """The same rules minus one grant, regrouped as one rule per (apiGroup, resource)."""
    kept: dict[tuple[str, str], list[str]] = {}
    for g, r, v in grants(rules):
        if (g, r, v) != removed:
            kept.setdefault((g, r), []).append(v)
    return [{"apiGroups": [g], "resources": [r], "verbs": verbs} for (g, r), verbs in kept.items()]


def grant_id(grant: Grant) -> str:
    g, r, v = grant
    return f"{r}.{g or 'core'}:{v}"


# ------------------------------------------------------------------------------ one run's world


@dataclass
class Identity:
    """Where a run goes and as whom. Picklable: a broken run's process gets it."""

    url: str
    admin_token: str
    ca_file: str | None
    token: str                      # the controller's
    sa_user: str                    # system:serviceaccount:NS:NAME
    namespaces: tuple[str, str]     # the scenario's, and the one of `retry`
    all_namespaces: bool            # the controller's mode (the emulator: its own API server)


@dataclass
class Env:
    who: Identity
    api: Api
    archive_dir: Path
    cluster: Any = None             # the DevCluster (emulator only: faults, request counts)

    def controller(self) -> Any:
        from controller.kube.client import ClientConfig
        from controller.operator import BackgroundController, Options

        options = Options(namespaces=[] if self.who.all_namespaces else list(self.who.namespaces),
                          archive_dir=str(self.archive_dir), metrics_port=0, health_port=0,
                          sweep_interval=3600.0, listen_host="127.0.0.1", force_delete_after=2.0,
                          orphan_min_age=0.0)
        config = ClientConfig(server=self.who.url, token=self.who.token, ca_file=self.who.ca_file,
                              default_namespace="default")
        return BackgroundController(options, config).start()

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


def run_namespaces(run: str) -> tuple[str, str]:
    return f"rbac-{run}", f"rbac-{run}-retry"


def start_emulator(rbac: dict[str, Any], rules: list[dict[str, Any]], archive_dir: Path, run: str) -> Env:
    """A fresh emulator with the CRD, the chart's ServiceAccount, binding and status policy, and
    `rules` as the chart's ClusterRole."""
    from controller.devcluster import DevCluster

    cluster = DevCluster().start()
    # as on OpenShift: blockOwnerDeletion needs `update` on agents/finalizers
    cluster.admission.owner_references_permission_enforcement = True
    try:
        cluster.apply_file(str(CRD))
        sa = copy.deepcopy(rbac["ServiceAccount"])
        ns, name = sa["metadata"]["namespace"], sa["metadata"]["name"]
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        cluster.create(sa)
        role = copy.deepcopy(rbac["ClusterRole"])
        role["rules"] = rules
        cluster.create(role)
        cluster.create(copy.deepcopy(rbac["ClusterRoleBinding"]))
        # the status write policy is on, as in the chart: the controller's writes (as its
        # ServiceAccount) and the agents' reports (as theirs) must pass it
        cluster.create(copy.deepcopy(rbac["ValidatingAdmissionPolicy"]))
        cluster.create(copy.deepcopy(rbac["ValidatingAdmissionPolicyBinding"]))
        api = Api(cluster.url, cluster.admin_token)
        namespaces = run_namespaces(run)
        for each in namespaces:
            api.create_namespace(each)
        who = Identity(cluster.url, cluster.admin_token, None, cluster.service_account_token(ns, name),
                       f"system:serviceaccount:{ns}:{name}", namespaces, all_namespaces=True)
    except BaseException:
        cluster.stop()
        raise
    archive_dir.mkdir(parents=True, exist_ok=True)
    return Env(who, api, archive_dir, cluster)


# On the real control plane: one identity per run (see the module docstring).

RUN_LABEL = "rbac.test.agentcontroller.dev/run"
QUOTA = "no-pods"
# kube-apiserver's refusal by the ResourceQuota `QUOTA` (what the emulator answers in its stead)
QUOTA_REFUSAL = (f'pods "retry" is forbidden: exceeded quota: {QUOTA}, requested: pods=1, used: pods=0, '
                 'limited: pods=0')
RBAC_V1 = "/apis/rbac.authorization.k8s.io/v1"
VAP_V1 = "/apis/admissionregistration.k8s.io/v1"


def control_plane_identity(cp: Any, rbac: dict[str, Any], rules: list[dict[str, Any]], run: str) -> Identity:
    """The run's ServiceAccount, ClusterRole(+Binding) with `rules`, status policy and namespaces
    on the real control plane `cp` (tests/backends.py); its controller token."""
    admin = cp.api()
    sa_ns, name = rbac["ServiceAccount"]["metadata"]["namespace"], f"rbac-{run}"
    user = f"system:serviceaccount:{sa_ns}:{name}"
    meta = {"name": name, "labels": {RUN_LABEL: run}}
    admin.call("POST", f"/api/v1/namespaces/{sa_ns}/serviceaccounts",
               {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {**meta, "namespace": sa_ns}})
    admin.call("POST", f"{RBAC_V1}/clusterroles",
               {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
                "rules": rules})
    admin.call("POST", f"{RBAC_V1}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": sa_ns}]})
    # The chart's status policy, for this run's ServiceAccount and namespaces.
    chart_user = "system:serviceaccount:{namespace}:{name}".format(**rbac["ServiceAccount"]["metadata"])
    policy = copy.deepcopy(rbac["ValidatingAdmissionPolicy"])
    policy["metadata"] = meta
    text = json.dumps(policy)
    assert chart_user in text, "the chart's status policy no longer names the controller's ServiceAccount"
    admin.call("POST", f"{VAP_V1}/validatingadmissionpolicies", json.loads(text.replace(chart_user, user)))
    binding = copy.deepcopy(rbac["ValidatingAdmissionPolicyBinding"])
    binding["metadata"] = meta
    binding["spec"]["policyName"] = name
    binding["spec"]["matchResources"] = {"namespaceSelector": {"matchLabels": {RUN_LABEL: run}}}
    admin.call("POST", f"{VAP_V1}/validatingadmissionpolicybindings", binding)

    namespaces = run_namespaces(run)
    for each in namespaces:
        cp.create_namespace(each, {RUN_LABEL: run})
    # `retry`'s pods are refused until the scenario lifts the quota. The quota admission refuses
    # every pod with "status unknown" until kube-controller-manager has computed the quota's usage:
    # wait for that, so the refusal is the one the controller treats as "exceeded quota".
    admin.call("POST", f"/api/v1/namespaces/{namespaces[1]}/resourcequotas", {
        "apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": QUOTA}, "spec": {"hard": {"pods": "0"}}})
    wait_for(lambda: "pods" in ((admin.call("GET", f"/api/v1/namespaces/{namespaces[1]}/resourcequotas/{QUOTA}")
                                 .get("status") or {}).get("used") or {}), message="the quota's usage")
    token = cp.cp.service_account_token(sa_ns, name)
    # RBAC is served from the API server's caches: wait until the new binding counts.
    g, r, v = grants(rules)[0]
    wait_for(lambda: can(Api(cp.url, token, cp.ca_file), v, r, g), message=f"RBAC of {user}")
    return Identity(cp.url, cp.admin_token, cp.ca_file, token, user, namespaces, all_namespaces=False)


def release_identity(cp: Any, who: Identity) -> None:
    """Remove what a run left: its Agents' finalizers (a broken run's controller may not have
    removed them), its namespaces, its ServiceAccount, RBAC and policy."""
    admin = cp.api()
    for ns in who.namespaces:
        for agent in admin.call("GET", f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents")["items"]:
            if agent["metadata"].get("finalizers"):
                _ignore_404(admin.patch_agent, ns, agent["metadata"]["name"], {"metadata": {"finalizers": None}})
        _ignore_404(admin.call, "DELETE", f"/api/v1/namespaces/{ns}")
    sa_ns, _, name = who.sa_user.removeprefix("system:serviceaccount:").partition(":")
    for path in (f"/api/v1/namespaces/{sa_ns}/serviceaccounts/{name}", f"{RBAC_V1}/clusterroles/{name}",
                 f"{RBAC_V1}/clusterrolebindings/{name}", f"{VAP_V1}/validatingadmissionpolicies/{name}",
                 f"{VAP_V1}/validatingadmissionpolicybindings/{name}"):
        _ignore_404(admin.call, "DELETE", path)


def _ignore_404(call: Callable[..., Any], *args: Any) -> None:
    try:
        call(*args)
    except HttpError as exc:
        if exc.status != 404:
            raise


def can(api: Api, verb: str, resource: str, group: str = "", namespace: str | None = "default",
        subresource: str = "") -> bool:
    """SelfSubjectAccessReview as `api`'s user."""
    attributes: dict[str, Any] = {"verb": verb, "resource": resource, "group": group}
    if namespace is not None:
        attributes["namespace"] = namespace
    if subresource:
        attributes["subresource"] = subresource
    elif "/" in resource:
        attributes["resource"], attributes["subresource"] = resource.split("/", 1)
    answer = api.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": attributes}})
    return bool(answer["status"].get("allowed"))


def open_env(who: Identity, archive_dir: Path) -> Env:
    archive_dir.mkdir(parents=True, exist_ok=True)
    return Env(who, Api(who.url, who.admin_token, who.ca_file), archive_dir)


# ------------------------------------------------------------------------------ the scenario


def forbidden(text: str) -> bool:
    """A refusal by RBAC (not the scenario's own quota refusal: "forbidden: exceeded quota")."""
    text = text.lower()
    return "forbidden" in text and "exceeded quota" not in text


class ForbiddenInLog(logging.Handler):
    """The first "forbidden" the controller logged (kopf's and ours: a watch, a list or a call that
    RBAC refused, retried forever)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.first: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.first is not None or not record.name.startswith(("kopf", "controller")):
            return
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" ({record.exc_info[1]!r})"
        if forbidden(text):
            self.first = f"{record.name}: {text[:500]}"


class Scenario:
    """The compact scenario against one running controller. `run()` raises Broken at the first
    symptom; it returns the seconds it took."""

    def __init__(self, env: Env, ctl: Any, log: ForbiddenInLog, budget: float = BUDGET):
        self.env = env
        self.api = env.api
        self.ctl = ctl
        self.log = log
        self.deadline = time.monotonic() + budget
        self.ns, self.ns2 = env.who.namespaces
        # the real API server: poll less (the runs share it)
        self.poll = POLL if env.cluster is not None else 3 * POLL
        self.uids: dict[str, str] = {}

    # ---- waiting, with the early symptoms of a broken controller

    def until(self, predicate: Callable[[], Any], what: str) -> Any:
        while True:
            self.symptoms()
            try:
                value = predicate()
            except HttpError as exc:
                if exc.status != 404:
                    raise
                value = None
            if value:
                return value
            if time.monotonic() > self.deadline:
                raise Broken(f"timed out: {what} ({self.describe()})")
            time.sleep(self.poll)

    def describe(self) -> str:
        """Where the agents are, for the message of a timeout."""
        out = []
        for ns in (self.ns, self.ns2):
            for agent in self.agents(ns):
                status = agent.get("status") or {}
                out.append(f"{agent['metadata']['name']}: {status.get('phase') or 'no status'}"
                           + (f"/{status['reason']}" if status.get("reason") else "")
                           + (f"/cleanup {status['cleanup'].get('state')}" if status.get("cleanup") else ""))
        return ", ".join(out) or "no agents left"

    def symptoms(self) -> None:
        if self.ctl.error is not None or (self.ctl._thread is not None and not self.ctl._thread.is_alive()):
            raise Broken(f"the controller stopped: {self.ctl.error!r}")
        if self.log.first is not None:
            raise Broken(f"the controller logged: {self.log.first}")
        for ns in (self.ns, self.ns2):
            # The controller's Warning Events (CleanupFailed: the cleanup is retried, and with
            # unchanged RBAC fails again, forever).
            for ev in self.api.events(ns):
                if ev.get("type") == "Warning" and forbidden(ev.get("message") or ""):
                    obj = ev.get("involvedObject") or {}
                    raise Broken(f"Warning Event on {obj.get('kind')} {obj.get('name')}: "
                                 f"{ev.get('reason')}: {ev.get('message')}")
            # A kopf handler that failed and is retried (kopf 1.45 posts no Events for that; its
            # progress annotation on the Agent says why).
            for agent in self.agents(ns):
                for key, value in (agent["metadata"].get("annotations") or {}).items():
                    if not key.startswith("agentcontroller.dev/"):
                        continue
                    try:
                        message = str(json.loads(value).get("message") or "")
                    except (ValueError, AttributeError):
                        continue
                    if forbidden(message):
                        raise Broken(f"handler {key.split('/', 1)[1]} of Agent {agent['metadata']['name']} "
                                     f"keeps failing: {message}")

    def agents(self, ns: str) -> list[dict[str, Any]]:
        path = f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents"
        return list(self.api.call("GET", path)["items"])

    def status(self, ns: str, name: str) -> dict[str, Any]:
        return self.api.agent(ns, name).get("status") or {}

    def phase_is(self, ns: str, name: str, phase: str) -> Callable[[], bool]:
        return lambda: self.status(ns, name).get("phase") == phase

    def cleaned(self, ns: str, name: str) -> Callable[[], Any]:
        def check() -> Any:
            cleanup = self.status(ns, name).get("cleanup") or {}
            if cleanup.get("state") == "Retrying":
                raise Broken(f"cleanup of {name} is Retrying: {cleanup.get('errors')}")
            return cleanup if cleanup.get("state") == "Succeeded" else None
        return check

    def gone(self, ns: str, name: str) -> Callable[[], bool]:
        def check() -> bool:
            agent = self.api.agent_or_none(ns, name)
            if agent is None:
                return True
            cleanup = (agent.get("status") or {}).get("cleanup") or {}
            if cleanup.get("state") == "Retrying":
                raise Broken(f"cleanup of {name} is Retrying: {cleanup.get('errors')}")
            return False
        return check

    def event(self, ns: str, reason: str, uid: str, count: int = 1) -> Callable[[], bool]:
        """An Event of `reason` about the object, with at least `count` (one Event: repeats aggregated)."""
        return lambda: any(e.get("reason") == reason and (e.get("involvedObject") or {}).get("uid") == uid
                           and int(e.get("count") or 1) >= count for e in self.api.events(ns))

    def create(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        self.uids[name] = self.api.create_agent(ns, name, {"image": "agent:1", **spec})["metadata"]["uid"]

    def orphan(self, kind: str, name: str) -> dict[str, Any]:
        labels = {"app.kubernetes.io/managed-by": "agent-controller", "agentcontroller.dev/agent": "gone",
                  "agentcontroller.dev/agent-uid": str(uuid.uuid4())}
        if kind == "pod":
            return self.api.create_pod(self.ns, {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "agent", "image": "agent:1",
                    "env": script([{"log": "orphan output\n"}, {"sleep": 3600}], on_term=[{"exit": 0}])}]}})
        return self.api.call("POST", f"/api/v1/namespaces/{self.ns}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
            "data": {"prompt.txt": "x"}})

    # ---- the run

    def run(self) -> float:
        began = time.monotonic()
        api, ns, ns2, cluster = self.api, self.ns, self.ns2, self.env.cluster
        orphan_pod = self.orphan("pod", "stray")
        self.orphan("configmap", "stray-prompt")

        # The pod creates of `retry` are refused by a quota until the scenario lifts it (the real
        # control plane: a ResourceQuota of 0 pods; the emulator, which has no quota admission: its
        # refusal, injected): the retry finds the agent's credentials and prompt already created, and
        # the refusals are one Warning Event whose count rises (a PATCH of the earlier Event).
        fault = None if cluster is None else cluster.faults.inject(
            verb="create", resource="pods", namespace=ns2, status=403, times=None, message=QUOTA_REFUSAL)
        self.create(ns2, "retry", {"prompt": "try again", "env": script([{"log": "retried\n"}, {"exit": 0}])})
        self.create(ns, "done", {
            "prompt": "Find the bug.\n", "cleanup": {"gracePeriodSeconds": 5},
            "env": script([{"log": "starting\n"}, {"report": {"phase": "Working", "progress": 40}},
                           {"log": "done thinking\n"},
                           {"report": {"phase": "Completed", "progress": 100, "message": "all done"}},
                           {"sleep": 3600}],
                          on_term=[{"log": "SIGTERM: flushing\n"}, {"exit": 0}])})
        # `exit`'s container exits by itself once it ran a moment (only the pod watch tells).
        self.create(ns, "exit", {"env": script([{"log": "working\n"}, {"sleep": 1}, {"exit": 1}])})
        self.create(ns, "kill", {"prompt": "k", "env": script([{"log": "running\n"}, {"sleep": 3600}])})
        self.create(ns, "del", {"prompt": "d",
                                "env": script([{"log": "about to be deleted\n"}, {"sleep": 3600}])})
        self.create(ns, "ttl", {"ttlSecondsAfterFinished": 0,
                                "env": script([{"log": "short\n"}, {"exit": 0}])})

        self.until(lambda: self.status(ns2, "retry").get("reason") == "QuotaExceeded",
                   "retry refused by the quota (QuotaExceeded)")
        self.until(self.event(ns2, "QuotaExceeded", self.uids["retry"], count=2),
                   "the quota's refusals told as one Event, count 2")
        if fault is None:
            api.call("DELETE", f"/api/v1/namespaces/{ns2}/resourcequotas/{QUOTA}")
        else:
            cluster.faults.remove(fault)
        self.until(self.phase_is(ns, "kill", "Running"), "kill Running")
        api.patch_agent(ns, "kill", {"spec": {"terminate": True}})
        self.until(self.phase_is(ns, "del", "Running"), "del Running")
        api.delete_agent(ns, "del")

        expected = {(ns, "done"): ("Completed", None), (ns, "exit"): ("Failed", "PodFailed"),
                    (ns, "kill"): ("Terminated", "Killed"), (ns2, "retry"): ("Completed", "PodSucceeded")}
        for (where, name), (phase, reason) in expected.items():
            cleanup = self.until(self.cleaned(where, name), f"cleanup of {name} Succeeded")
            status = self.status(where, name)
            if status.get("phase") != phase or reason not in (None, status.get("reason")):
                raise Broken(f"{name}: {status.get('phase')}/{status.get('reason')}, "
                             f"expected {phase}/{reason or 'any reason'}")
            flags = {k: cleanup.get(k) for k in ("podDeleted", "promptDeleted", "credentialsDeleted",
                                                  "logsArchived", "verifiedNoLeaks")}
            if not all(flags.values()):
                raise Broken(f"cleanup of {name}: {flags}")
        for name in ("del", "ttl"):
            self.until(self.gone(ns, name), f"Agent {name} deleted")
        for name in ("del", "ttl", "done"):
            directory = self.env.archive_dir / ns / name / self.uids[name]
            if not (directory / "MANIFEST.json").exists():
                raise Broken(f"no archive of {name}")
        done_log = self.env.archive_dir / ns / "done" / self.uids["done"] / "agent.log"
        if b"SIGTERM: flushing\n" not in done_log.read_bytes():
            raise Broken("the archive of done lacks what its pod wrote during the grace period")
        for (where, name) in list(expected) + [(ns, "del"), (ns, "ttl")]:
            self.until(self.event(where, "CleanedUp", self.uids[name]), f"CleanedUp Event of {name}")

        # The safety net.
        report = self.ctl.sweep(timeout=max(1.0, self.deadline - time.monotonic()))
        if report is None:
            raise Broken(f"the sweep failed: {self.ctl.sweeper.last_error}")
        if report.errors:
            raise Broken(f"the sweep reported errors: {report.errors}")
        if dict(report.reaped) != {"pod": 1, "configmap": 1}:
            raise Broken(f"the sweep reaped {dict(report.reaped)}, expected the orphan pod and configmap")
        orphan_archive = self.env.archive_dir / ns / "_orphans" / orphan_pod["metadata"]["uid"]
        if not (orphan_archive / "MANIFEST.json").exists():
            raise Broken("the orphan pod was not archived")
        self.until(self.event(ns, "LeakReaped", orphan_pod["metadata"]["uid"]), "LeakReaped Event")
        self.symptoms()

        for where in (ns, ns2):
            left = leftovers(api, where, MANAGED)
            if left:
                raise Broken(f"left in {where}: {left}")
        return time.monotonic() - began


def run_scenario(env: Env, budget: float = BUDGET) -> float:
    """Start the controller, run the scenario, stop the controller."""
    log = ForbiddenInLog()
    logging.getLogger().addHandler(log)
    try:
        try:
            ctl = env.controller()
        except Exception as exc:
            raise Broken(f"the controller did not start: {exc}") from exc
        try:
            return Scenario(env, ctl, log, budget).run()
        finally:
            ctl.stop()
    finally:
        logging.getLogger().removeHandler(log)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def rbac() -> dict[str, Any]:
    return chart_rbac()


@pytest.fixture(scope="module")
def control_plane_or_none(request: pytest.FixtureRequest, backend_name: str) -> Any:
    """The real control plane (tests/backends.py) with `--backend control-plane`, else None."""
    return request.getfixturevalue("control_plane") if backend_name == "control-plane" else None


@pytest.fixture(scope="module")
def full_env(rbac: dict[str, Any], control_plane_or_none: Any,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    archive = tmp_path_factory.mktemp("full") / "archive"
    rules = rbac["ClusterRole"]["rules"]
    cp = control_plane_or_none
    if cp is None:
        env = start_emulator(rbac, rules, archive, "full")
        yield env
        env.stop()
        return
    who = control_plane_identity(cp, rbac, rules, "full")
    try:
        yield open_env(who, archive)
    finally:
        release_identity(cp, who)


def _broken_run(rbac: dict[str, Any], removed: Grant, directory: Path, run: str,
                who: Identity | None) -> str | None:
    """Run the scenario with one grant removed; the symptom, or None if it passed. `who`: the
    run's identity on the real control plane (made by the parent), None for an emulator of its own.

    Runs in a process of its own: the controller registers its kopf login handler in a
    module-global registry on every start, and kopf keeps the credentials of the last one, so two
    controllers running at once in one process would use each other's API server and token."""
    directory.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(directory / "controller.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    if who is None:
        env = start_emulator(rbac, rules_without(rbac["ClusterRole"]["rules"], removed), directory / "archive", run)
    else:
        env = open_env(who, directory / "archive")
    try:
        run_scenario(env)
        return None
    except Broken as exc:
        return str(exc)
    finally:
        env.stop()


@dataclass
class Outcome:
    symptom: str | None = None      # what broke; None: the scenario passed
    error: str | None = None        # the run itself failed (a bug of this test)


@pytest.fixture(scope="module")
def broken_runs(request: pytest.FixtureRequest, rbac: dict[str, Any], control_plane_or_none: Any,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Grant, Outcome]]:
    """The broken runs of every selected test B, a few at a time, each in a fresh process (with
    its own emulator, or its own identity on the control plane; logs:
    <tmp>/broken*/<grant>/controller.log)."""
    selected = [item.callspec.params["removed"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_removing_any_grant_breaks_the_scenario"
                and hasattr(item, "callspec") and item.callspec.params.get("removed") is not None]
    base = tmp_path_factory.mktemp("broken")
    cp = control_plane_or_none
    rules = rbac["ClusterRole"]["rules"]
    identities: dict[Grant, Identity] = {}
    outcomes: dict[Grant, Outcome] = {}
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=PARALLEL, mp_context=context, max_tasks_per_child=1) as pool:
            futures = {}
            for i, g in enumerate(dict.fromkeys(selected)):
                run = str(i)
                if cp is not None:
                    identities[g] = control_plane_identity(cp, rbac, rules_without(rules, g), run)
                futures[g] = pool.submit(_broken_run, rbac, g, base / grant_id(g).replace(":", "-"), run,
                                         identities.get(g))
            for g, future in futures.items():
                try:
                    outcomes[g] = Outcome(symptom=future.result(timeout=BUDGET * 4 + 60))
                except Exception:  # noqa: BLE001 - reported by the test of that grant
                    outcomes[g] = Outcome(error=traceback.format_exc())
        yield outcomes
    finally:
        for who in identities.values():
            release_identity(cp, who)


# ------------------------------------------------------------------------------ tests


def test_full_cluster_role_passes_the_scenario(full_env: Env, rbac: dict[str, Any]) -> None:
    # No timed assertion (machines are noisy): a generous budget here; the broken runs keep BUDGET,
    # which can only make a removal look harmful, never hide one.
    seconds = run_scenario(full_env, budget=max(120.0, BUDGET))
    if seconds > FULL_ROLE_MAX_SECONDS:
        warnings.warn(f"the full role needed {seconds:.1f}s: the broken runs' budget ({BUDGET}s) may be tight")
    if full_env.cluster is None:
        return      # the real API server: the scenario already failed on any "forbidden" it logged
    # The role denies the controller nothing it asks for: kopf's dynamic observation of CRDs and
    # namespaces (cluster-wide lists the role does not grant) is switched off
    # (settings.scanning.disabled). All-namespaces mode never lists namespaces; discovery is allowed
    # to every authenticated user by system:discovery.
    granted = {(verb, resource) for _, resource, verb in grants(rbac["ClusterRole"]["rules"])}
    used = full_env.cluster.requests_by_user[full_env.who.sa_user]
    denied = {key for key in used if not key[1].startswith("/") and key not in granted}
    assert denied == set(), sorted(used.items())


def _chart_grants() -> list[Grant]:
    return grants(chart_rbac()["ClusterRole"]["rules"])


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "removed" in metafunc.fixturenames:
        try:
            found = _chart_grants()
        except pytest.skip.Exception as exc:   # helm not installed (outside CI): skip, visibly
            metafunc.parametrize("removed", [pytest.param(None, marks=pytest.mark.skip(reason=str(exc)))])
            return
        metafunc.parametrize("removed", found, ids=[grant_id(g) for g in found])


def test_removing_any_grant_breaks_the_scenario(removed: Grant, broken_runs: dict[Grant, Outcome]) -> None:
    outcome = broken_runs[removed]
    if outcome.error is not None:
        pytest.fail(f"the run without {grant_id(removed)} could not be carried out:\n{outcome.error}")
    assert outcome.symptom is not None, (
        f"the scenario passes without {grant_id(removed)}: the permission is unused, "
        "remove it from the chart")
    print(f"without {grant_id(removed)}: {outcome.symptom}")


# ------------------------------------------------------------------------------ and nothing more

# What Kubernetes lets every authenticated user do (system:basic-user), besides discovery; and
# since 1.33 every ServiceAccount read ClusterTrustBundles (public CA certificates).
EVERYONE = {("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
            ("authorization.k8s.io", "selfsubjectrulesreviews", "create"),
            ("authentication.k8s.io", "selfsubjectreviews", "create"),
            *(("certificates.k8s.io", "clustertrustbundles", v) for v in ("get", "list", "watch"))}

CLUSTER_SCOPED = {"nodes", "nodes/proxy", "namespaces", "users", "groups", "clusterroles",
                  "clusterrolebindings", "customresourcedefinitions", "validatingadmissionpolicies",
                  "validatingadmissionpolicybindings", "certificatesigningrequests"}

# What the controller of Agents must never be able to do: read credentials, get into pods, mint
# tokens, act as someone else, widen RBAC, touch nodes, Agents' specs, the CRD or the status policy.
NEVER: list[Grant] = [
    ("", "secrets", "get"), ("", "secrets", "list"), ("", "secrets", "watch"), ("", "secrets", "create"),
    ("", "pods/exec", "create"), ("", "pods/attach", "create"), ("", "pods/portforward", "create"),
    ("", "pods/ephemeralcontainers", "patch"), ("", "pods", "update"), ("", "pods", "patch"),
    ("", "serviceaccounts/token", "create"), ("", "serviceaccounts", "impersonate"),
    ("", "users", "impersonate"), ("", "groups", "impersonate"), ("", "nodes", "get"), ("", "nodes/proxy", "get"),
    ("", "namespaces", "create"), ("", "namespaces", "delete"), ("", "configmaps", "update"),
    ("", "persistentvolumeclaims", "get"), ("", "services", "create"),
    ("rbac.authorization.k8s.io", "roles", "bind"), ("rbac.authorization.k8s.io", "roles", "escalate"),
    ("rbac.authorization.k8s.io", "roles", "update"), ("rbac.authorization.k8s.io", "rolebindings", "update"),
    ("rbac.authorization.k8s.io", "clusterroles", "create"),
    ("rbac.authorization.k8s.io", "clusterrolebindings", "create"),
    ("agentcontroller.dev", "agents", "create"), ("agentcontroller.dev", "agents", "update"),
    ("agentcontroller.dev", "agents/status", "update"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "update"),
    ("admissionregistration.k8s.io", "validatingadmissionpolicies", "delete"),
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings", "update"),
    ("apps", "deployments", "create"), ("batch", "jobs", "create"),
    ("certificates.k8s.io", "certificatesigningrequests", "create"),
]


def rules_review(api: Api, namespace: str) -> set[Grant]:
    """The resource grants SelfSubjectRulesReview says `api`'s user has in `namespace`."""
    answer = api.call("POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews", {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview", "spec": {"namespace": namespace}})
    status = answer["status"]
    assert not status.get("incomplete"), status.get("evaluationError")
    out: set[Grant] = set()
    for rule in status.get("resourceRules") or []:
        assert not rule.get("resourceNames"), rule     # the chart's default rules name no objects
        out.update(itertools.product(rule.get("apiGroups") or [""], rule["resources"], rule["verbs"]))
    return out


def test_the_controller_can_do_nothing_outside_its_rules(full_env: Env, rbac: dict[str, Any]) -> None:
    """Test C: the controller's identity, bound to the chart's ClusterRole, has exactly its grants
    (and what every authenticated user has); the dangerous things one might fear are each refused."""
    api = Api(full_env.who.url, full_env.who.token, full_env.who.ca_file)
    chart = set(grants(rbac["ClusterRole"]["rules"]))
    namespace = full_env.who.namespaces[0]
    assert rules_review(api, namespace) - EVERYONE == chart
    for g, r, v in sorted(chart):
        assert can(api, v, r, g, namespace=None), f"the chart grants {grant_id((g, r, v))}, RBAC refuses it"
    allowed = [grant_id((g, r, v)) for g, r, v in NEVER
               for where in ([None] if r in CLUSTER_SCOPED else [namespace, None])
               if can(api, v, r, g, namespace=where)]
    assert allowed == [], f"the controller may {allowed}"
