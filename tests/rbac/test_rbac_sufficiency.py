"""RBAC is exactly sufficient (issue #4).

The chart's ClusterRole (`helm template`, default values) and ClusterRoleBinding are loaded into
the API emulator, which evaluates RBAC for real; the real controller runs in all-namespaces mode
(what the ClusterRole is for), authenticated as the chart's ServiceAccount. One compact scenario
exercises, through the API as a user would, everything the core and safety-net scenarios need:

- `done`:  reports Completed while its pod runs (archive with grace-period lines, pod delete,
           prompt + credential deletes, verification lists, a CleanedUp Event);
- `exit`:  its pod exits (code 1);
- `kill`:  killed with spec.terminate;
- `del`:   the Agent is deleted (the finalizer holds it until its cleanup archived everything);
- `ttl`:   ttlSecondsAfterFinished: 0 (the controller deletes the Agent);
- `retry`: the first pod create fails (API error) so the retry finds its ServiceAccount, Role,
           RoleBinding and ConfigMap already there (409, then a GET to see that they are its own);
- a sweep that archives and reaps an orphan pod and reaps an orphan ConfigMap.

It passes when every agent reaches cleanup Succeeded with verifiedNoLeaks (or is gone where that
is expected), each got its CleanedUp Event, and nothing managed is left.

Test A: with the full rendered ClusterRole the scenario passes.
Test B: for every (apiGroup, resource, verb) the ClusterRole grants, the same ClusterRole minus
that one verb makes the scenario fail. RBAC is a union of grants, so removing a whole rule (or
more) denies at least what removing one of its verbs denies: no rule can be dropped either.

Every run gets its own emulator (a controller in all-namespaces mode would otherwise pick up what
a previous, deliberately broken run left behind); the broken runs go a few at a time, each in a
process of its own (see _broken_run for why not threads). A broken run stops at the first
symptom a user would see: a cleanup in state Retrying, a Warning Event saying "forbidden", a kopf
handler whose progress annotation on the Agent says "forbidden" (it is retried, and with
unchanged RBAC fails again, forever), the sweep failing, or the scenario's time budget running
out; the full role passes well within that budget.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import json
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
from helpers import Api, HttpError, leftovers, script

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

_ns_counter = itertools.count(1)


class Broken(AssertionError):
    """The scenario failed: something the controller must do did not happen."""


# ------------------------------------------------------------------------------ the chart


def chart_rbac() -> dict[str, Any]:
    """ServiceAccount, ClusterRole, ClusterRoleBinding and the status ValidatingAdmissionPolicy
    (+ binding) of `helm template` with default values."""
    from shipping.shiputil import one, render

    docs = render()
    return {kind: one(docs, kind) for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding",
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


# ------------------------------------------------------------------------------ one emulator


@dataclass
class Env:
    cluster: Any
    api: Api
    token: str
    sa_user: str
    archive_dir: Path

    def controller(self) -> Any:
        from controller.kube.client import ClientConfig
        from controller.operator import BackgroundController, Options

        options = Options(namespaces=[], archive_dir=str(self.archive_dir), metrics_port=0, health_port=0,
                          sweep_interval=3600.0, listen_host="127.0.0.1", force_delete_after=2.0,
                          orphan_min_age=0.0)
        config = ClientConfig(server=self.cluster.url, token=self.token, default_namespace="default")
        return BackgroundController(options, config).start()


def start_env(rbac: dict[str, Any], rules: list[dict[str, Any]], archive_dir: Path) -> Env:
    """A fresh emulator with the CRD, the chart's ServiceAccount and binding, and `rules` as the
    chart's ClusterRole."""
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
        token = cluster.service_account_token(ns, name)
    except BaseException:
        cluster.stop()
        raise
    archive_dir.mkdir(parents=True, exist_ok=True)
    return Env(cluster, Api(cluster.url, cluster.admin_token), token, f"system:serviceaccount:{ns}:{name}",
               archive_dir)


# ------------------------------------------------------------------------------ the scenario


class Scenario:
    """The compact scenario against one running controller. `run()` raises Broken at the first
    symptom; it returns the seconds it took."""

    def __init__(self, env: Env, ctl: Any, budget: float = BUDGET):
        self.env = env
        self.api = env.api
        self.ctl = ctl
        self.deadline = time.monotonic() + budget
        n = next(_ns_counter)
        self.ns = f"rbac-{n}"
        self.ns2 = f"rbac-{n}-retry"
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
            time.sleep(POLL)

    def describe(self) -> str:
        """Where the agents are, for the message of a timeout."""
        out = []
        for ns in (self.ns, self.ns2):
            for agent in self.agents(ns):
                status = agent.get("status") or {}
                out.append(f"{agent['metadata']['name']}: {status.get('phase') or 'no status'}"
                           + (f"/cleanup {status['cleanup'].get('state')}" if status.get("cleanup") else ""))
        return ", ".join(out) or "no agents left"

    def symptoms(self) -> None:
        if self.ctl.error is not None or (self.ctl._thread is not None and not self.ctl._thread.is_alive()):
            raise Broken(f"the controller stopped: {self.ctl.error!r}")
        for ns in (self.ns, self.ns2):
            # The controller's Warning Events (CleanupFailed: the cleanup is retried, and with
            # unchanged RBAC fails again, forever).
            for ev in self.api.events(ns):
                if ev.get("type") == "Warning" and "forbidden" in (ev.get("message") or "").lower():
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
                    if "forbidden" in message.lower():
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

    def event(self, ns: str, reason: str, uid: str) -> Callable[[], bool]:
        return lambda: any(e.get("reason") == reason and (e.get("involvedObject") or {}).get("uid") == uid
                           for e in self.api.events(ns))

    def create(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        self.uids[name] = self.api.create_agent(ns, name, {"image": "agent:1", **spec})["metadata"]["uid"]

    def orphan(self, kind: str, name: str) -> dict[str, Any]:
        labels = {"app.kubernetes.io/managed-by": "agent-controller", "agentcontroller.dev/agent": "gone",
                  "agentcontroller.dev/agent-uid": str(uuid.uuid4())}
        if kind == "pod":
            return self.api.call("POST", f"/api/v1/namespaces/{self.ns}/pods", {
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                    "name": "agent", "image": "agent:1",
                    "env": script([{"log": "orphan output\n"}, {"sleep": 3600}], on_term=[{"exit": 0}])}]}})
        return self.api.call("POST", f"/api/v1/namespaces/{self.ns}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
            "data": {"prompt.txt": "x"}})

    # ---- the run

    def run(self) -> float:
        from controller.kube.client import KubeClient

        began = time.monotonic()
        api, ns, ns2 = self.api, self.ns, self.ns2
        api.create_namespace(ns)
        api.create_namespace(ns2)
        orphan_pod = self.orphan("pod", "stray")
        self.orphan("configmap", "stray-prompt")

        # The first pod create of `retry` fails (past the client's own retries): the retry finds
        # the agent's credentials and prompt already created.
        attempts = 1 + inspect.signature(KubeClient).parameters["retries"].default
        fault = self.env.cluster.faults.inject(verb="create", resource="pods", namespace=ns2, status=500,
                                               times=attempts)
        self.create(ns2, "retry", {"prompt": "try again", "env": script([{"log": "retried\n"}, {"exit": 0}])})
        self.create(ns, "done", {
            "prompt": "Find the bug.\n", "cleanup": {"gracePeriodSeconds": 5},
            "env": script([{"log": "starting\n"}, {"report": {"phase": "Working", "progress": 40}},
                           {"log": "done thinking\n"},
                           {"report": {"phase": "Completed", "progress": 100, "message": "all done"}},
                           {"sleep": 3600}],
                          on_term=[{"log": "SIGTERM: flushing\n"}, {"exit": 0}])})
        self.create(ns, "exit", {"env": script([{"log": "working\n"}, {"sleep": 3600}])})
        self.create(ns, "kill", {"prompt": "k", "env": script([{"log": "running\n"}, {"sleep": 3600}])})
        self.create(ns, "del", {"prompt": "d",
                                "env": script([{"log": "about to be deleted\n"}, {"sleep": 3600}])})
        self.create(ns, "ttl", {"ttlSecondsAfterFinished": 0,
                                "env": script([{"log": "short\n"}, {"exit": 0}])})

        # The container of `exit` exits once the agent is Running (only the pod watch tells).
        self.until(self.phase_is(ns, "exit", "Running"), "exit Running")
        self.env.cluster.kubelet.exit(ns, "exit", 1)
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
        if fault.hits < attempts:
            raise Broken(f"the pod-create fault was hit {fault.hits} times, expected {attempts}")
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

        for where in (ns, ns2):
            left = leftovers(api, where, MANAGED)
            if left:
                raise Broken(f"left in {where}: {left}")
        return time.monotonic() - began


def run_scenario(env: Env, budget: float = BUDGET) -> float:
    """Start the controller, run the scenario, stop the controller."""
    try:
        ctl = env.controller()
    except Exception as exc:
        raise Broken(f"the controller did not start: {exc}") from exc
    try:
        return Scenario(env, ctl, budget).run()
    finally:
        ctl.stop()


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def rbac() -> dict[str, Any]:
    return chart_rbac()


@pytest.fixture(scope="module")
def full_env(rbac: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    env = start_env(rbac, rbac["ClusterRole"]["rules"], tmp_path_factory.mktemp("full") / "archive")
    yield env
    env.cluster.stop()


def _broken_run(rbac: dict[str, Any], removed: Grant, directory: Path) -> str | None:
    """Run the scenario with one grant removed; the symptom, or None if it passed.

    Runs in a process of its own: the controller registers its kopf login handler in a
    module-global registry on every start, and kopf keeps the credentials of the last one, so two
    controllers running at once in one process would use each other's emulator and token."""
    import logging

    directory.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(directory / "controller.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    rules = rules_without(rbac["ClusterRole"]["rules"], removed)
    env = start_env(rbac, rules, directory / "archive")
    try:
        run_scenario(env)
        return None
    except Broken as exc:
        return str(exc)
    finally:
        env.cluster.stop()


@dataclass
class Outcome:
    symptom: str | None = None      # what broke; None: the scenario passed
    error: str | None = None        # the run itself failed (a bug of this test)


@pytest.fixture(scope="module")
def broken_runs(request: pytest.FixtureRequest, rbac: dict[str, Any],
                tmp_path_factory: pytest.TempPathFactory) -> dict[Grant, Outcome]:
    """The broken runs of every selected test B, a few at a time, each in a fresh process with its
    own emulator (logs: <tmp>/broken*/<grant>/controller.log)."""
    selected = [item.callspec.params["removed"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_removing_any_grant_breaks_the_scenario"
                and hasattr(item, "callspec") and item.callspec.params.get("removed") is not None]
    base = tmp_path_factory.mktemp("broken")
    outcomes: dict[Grant, Outcome] = {}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=PARALLEL, mp_context=context, max_tasks_per_child=1) as pool:
        futures = {g: pool.submit(_broken_run, rbac, g, base / grant_id(g).replace(":", "-"))
                   for g in dict.fromkeys(selected)}
        for g, future in futures.items():
            try:
                outcomes[g] = Outcome(symptom=future.result(timeout=BUDGET * 4 + 60))
            except Exception:  # noqa: BLE001 - reported by the test of that grant
                outcomes[g] = Outcome(error=traceback.format_exc())
    return outcomes


# ------------------------------------------------------------------------------ tests


def test_full_cluster_role_passes_the_scenario(full_env: Env, rbac: dict[str, Any]) -> None:
    # No timed assertion (machines are noisy): a generous budget here; the broken runs keep BUDGET,
    # which can only make a removal look harmful, never hide one.
    seconds = run_scenario(full_env, budget=max(120.0, BUDGET))
    if seconds > FULL_ROLE_MAX_SECONDS:
        warnings.warn(f"the full role needed {seconds:.1f}s: the broken runs' budget ({BUDGET}s) may be tight")
    # The role denies the controller nothing it asks for: kopf's dynamic observation of CRDs and
    # namespaces (cluster-wide lists the role does not grant) is switched off
    # (settings.scanning.disabled). All-namespaces mode never lists namespaces; discovery is allowed
    # to every authenticated user by system:discovery.
    granted = {(verb, resource) for _, resource, verb in grants(rbac["ClusterRole"]["rules"])}
    used = full_env.cluster.requests_by_user[full_env.sa_user]
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
