"""`agent-controller demo`: the whole product working, with no cluster.

Starts the in-process Kubernetes API emulator and simulated kubelet, runs the real controller (the
same code as `agent-controller run`, with its metrics and sweep) against it, launches sample agents
that take every path — report Completed while running, exit 0, exit 1, killed, deadline, deleted
mid-run, pod lost, plus an orphan pod for the sweep — and shows their cleanup live.

The controller watches every namespace and the kubeconfig it writes (`--kubeconfig-out`, default
`./demo.kubeconfig`) has the context namespace `demo`, so `kubectl --kubeconfig demo.kubeconfig
apply -f examples/demo/` runs your own Agents beside the samples: images under `sim.local/` run
their `command` as real local processes (`agentctl run -- sh -c ...`, with the pod's env and
token), every other image is a simulated container that idles until it is killed or deleted.
"""

from __future__ import annotations

import argparse
import base64
import errno
import json
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from .cliargs import int_in, port

NAMESPACE = "demo"
PATHS = ("report", "exit0", "exit1", "kill", "deadline", "delete", "podlost")
DEFAULT_KUBECONFIG = "demo.kubeconfig"
# Agents that really run on the demo's simulated node (images under sim.local/); in a source checkout.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "demo"


@dataclass
class Sample:
    name: str
    path: str
    spec: dict[str, Any]
    action_at: float | None = None     # seconds after start for kill / delete / pod deletion
    acted: bool = False
    uid: str = ""
    expected_log: bytes = b""
    archive: bool = True


@dataclass
class Demo:
    samples: list[Sample] = field(default_factory=list)
    orphan_uid: str = ""
    started: float = field(default_factory=time.monotonic)


def _script(steps: list[Any], on_term: list[Any] | None = None) -> list[dict[str, Any]]:
    body: dict[str, Any] = {"steps": steps}
    if on_term is not None:
        body["onTerm"] = on_term
    return [{"name": "DEVCLUSTER_SCRIPT", "value": json.dumps(body)}]


def build_samples(count: int) -> list[Sample]:
    """`count` agents cycling through every path (the first seven cover each path once)."""
    samples = []
    for i in range(count):
        path = PATHS[i % len(PATHS)]
        suffix = "" if i < len(PATHS) else f"-{i // len(PATHS)}"
        jitter = (i // len(PATHS)) * 0.01
        base = {"image": "example.com/agents/demo:1.0", "cleanup": {"gracePeriodSeconds": 2}}
        if path == "report":
            name = "researcher" + suffix
            steps = [{"log": "reading the repository\n"}, {"report": {"phase": "Working", "progress": 20,
                                                                      "message": "reading"}},
                     {"sleep": 0.8 + jitter}, {"log": "drafting the answer\n"},
                     {"report": {"phase": "Working", "progress": 70, "message": "drafting"}}, {"sleep": 0.8},
                     {"log": "answer written\n"},
                     {"report": {"phase": "Completed", "progress": 100, "message": "answer written"}},
                     {"sleep": 3600}]
            on_term = [{"log": "SIGTERM: flushing notes during the grace period\n"}, {"exit": 0}]
            spec = dict(base, prompt="Summarise the open issues.", env=_script(steps, on_term))
            log = b"reading the repository\ndrafting the answer\nanswer written\n" \
                  b"SIGTERM: flushing notes during the grace period\n"
            samples.append(Sample(name, path, spec, expected_log=log))
        elif path == "exit0":
            steps = [{"log": "summarising 12 files\n"}, {"sleep": 1.5 + jitter}, {"log": "summary done\n"}, {"exit": 0}]
            samples.append(Sample("summarizer" + suffix, path, dict(base, env=_script(steps)),
                                  expected_log=b"summarising 12 files\nsummary done\n"))
        elif path == "exit1":
            steps = [{"log": "calling the tool\n"}, {"sleep": 1.2 + jitter},
                     {"log": "Traceback: tool timed out\n"}, {"exit": 1}]
            samples.append(Sample("crasher" + suffix, path, dict(base, env=_script(steps)),
                                  expected_log=b"calling the tool\nTraceback: tool timed out\n"))
        elif path == "kill":
            steps = [{"log": "looping forever\n"}, {"sleep": 3600}]
            samples.append(Sample("runaway" + suffix, path, dict(base, env=_script(steps, [{"exit": 143}])),
                                  action_at=2.5 + jitter, expected_log=b"looping forever\n"))
        elif path == "deadline":
            steps = [{"log": "thinking very slowly\n"}, {"sleep": 3600}]
            samples.append(Sample("slowpoke" + suffix, path,
                                  dict(base, activeDeadlineSeconds=4, env=_script(steps, [{"exit": 143}])),
                                  expected_log=b"thinking very slowly\n"))
        elif path == "delete":
            steps = [{"log": "working on a cancelled task\n"}, {"sleep": 3600}]
            samples.append(Sample("cancelled" + suffix, path, dict(base, env=_script(steps, [{"exit": 143}])),
                                  action_at=3.0 + jitter, expected_log=b"working on a cancelled task\n"))
        else:
            steps = [{"log": "my node is about to vanish\n"}, {"sleep": 3600}]
            samples.append(Sample("vanished" + suffix, path,
                                  dict(base, cleanup={"gracePeriodSeconds": 2, "logs": "Delete"},
                                       env=_script(steps)), action_at=2.0 + jitter, archive=False))
    return samples


# ----------------------------------------------------------------------------- CLI


def add_demo_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the controller against an embedded API emulator with sample agents",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int_in(1, 5000, "number of agents"), default=len(PATHS), metavar="N",
                   help=f"number of sample agents (default {len(PATHS)}: one per path)")
    p.add_argument("--archive-dir", default="./agent-archive", help="archive root (default %(default)s)")
    p.add_argument("--metrics-port", type=port, default=9102, help="Prometheus /metrics port (%(default)s)")
    p.add_argument("--health-port", type=port, default=0, help="/healthz port (default: any free port)")
    p.add_argument("--kubeconfig-out", metavar="FILE", default=DEFAULT_KUBECONFIG,
                   help="where to write the kubeconfig of the emulator, context namespace demo (default "
                        "%(default)s; then: kubectl --kubeconfig FILE get agents -w)")
    p.add_argument("--exit-when-done", action="store_true",
                   help="exit when every agent is cleaned up and the last sweep found no leak (exit 0 only then)")
    p.add_argument("--timeout", type=float, default=180.0, help="with --exit-when-done: give up after this many "
                                                                "seconds (default %(default)s)")
    p.add_argument("--log-format", choices=["text", "json"], default="text")


def _check_port(port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SystemExit(f"agent-controller demo: port {port} is already in use "
                                 f"(choose another with --metrics-port)") from None
            raise


def main(args: argparse.Namespace) -> int:
    import logging

    from .cli import setup_logging

    try:
        _check_port(args.metrics_port)
        if args.health_port and args.health_port == args.metrics_port:
            raise SystemExit("agent-controller demo: --health-port must differ from --metrics-port")
        archive = Path(args.archive_dir)
        try:
            archive.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SystemExit(f"agent-controller demo: cannot create archive dir {archive}: {exc.strerror}") from None
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging(args.log_format, logging.WARNING)
    logging.getLogger("kopf._core.reactor.running").setLevel(logging.ERROR)  # "signals ignored in a thread"
    runner = DemoRunner(args, archive)
    return runner.run()


class DemoRunner:
    def __init__(self, args: argparse.Namespace, archive: Path, out: TextIO = sys.stdout):
        self.args = args
        self.archive = archive.resolve()
        self.out = out
        self.tty = out.isatty()
        self.stop = threading.Event()
        self.demo = Demo(samples=build_samples(args.agents))
        self._drawn = 0
        self._last: dict[str, tuple[str, str]] = {}     # the state last printed, per Agent

    def run(self) -> int:
        from .devcluster import DevCluster
        from .kube.client import ClientConfig
        from .operator import BackgroundController, Options

        crd = Path(__file__).parent / "data" / "crd.yaml"
        cluster = DevCluster()
        cluster.start()
        ctl: Any = None
        previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        try:
            cluster.apply_file(str(crd))
            cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
            if self.args.kubeconfig_out:
                cluster.kubeconfig_path(self.args.kubeconfig_out, user="admin", namespace=NAMESPACE)
            # Every namespace: an Agent applied anywhere (the kubeconfig's namespace is `demo`) runs.
            options = Options(namespaces=[], archive_dir=str(self.archive),
                              metrics_port=self.args.metrics_port, health_port=self.args.health_port,
                              sweep_interval=3.0, sweep_timeout=30.0, listen_host="127.0.0.1",
                              ship_port=0)     # agentctl run ships output to it (examples/demo/big-log.yaml)
            config = ClientConfig(server=cluster.url, token=cluster.admin_token, default_namespace=NAMESPACE)
            ctl = BackgroundController(options, config).start()
            self._banner(cluster, ctl)
            self._launch(cluster)
            ok, why = self._watch(cluster, ctl)
            if ok:
                checked, bad = self._verify_archives(cluster)
                if bad:
                    ok, why = False, f"archived logs differ from what the kubelet served: {', '.join(bad)}"
                else:
                    why += f"; {checked} archived logs byte-identical to what the kubelet served"
            self._summary(cluster, ctl, ok, why)
            if self.args.exit_when_done or self.stop.is_set():
                return 0 if ok else 1
            self._try_it(ctl)
            self._follow(cluster)
            return 0
        except OSError as exc:
            print(f"agent-controller demo: {exc}", file=sys.stderr)
            return 1
        finally:
            signal.signal(signal.SIGINT, previous)
            if ctl is not None:
                ctl.stop()
            cluster.stop()

    # ------------------------------------------------------------------ steps

    def _banner(self, cluster: Any, ctl: Any) -> None:
        print("agent-controller demo — an in-process Kubernetes API emulator, a simulated kubelet and the real "
              "controller", file=self.out)
        print(f"  API server: {cluster.https_url or cluster.url}   metrics: {ctl.metrics_url}   "
              f"archive: {self.archive}", file=self.out)
        if self.args.kubeconfig_out:
            kc = self.args.kubeconfig_out
            print(f"  kubeconfig: {kc} (context namespace {NAMESPACE}; the controller watches every namespace)",
                  file=self.out)
            print(f"  watch along: kubectl --kubeconfig {kc} get agents -w", file=self.out)
            print(f"  your own:    kubectl --kubeconfig {kc} apply -f {_examples_hint()}", file=self.out)
        print(file=self.out)

    def _try_it(self, ctl: Any) -> None:
        """After the samples: how to run your own Agents against the demo (it keeps running)."""
        print(f"\nStill running (metrics at {ctl.metrics_url}) — press Ctrl-C to stop.", file=self.out)
        if not self.args.kubeconfig_out:
            print(file=self.out, flush=True)
            return
        kc = self.args.kubeconfig_out
        print(f"Run your own Agents (images under sim.local/ run their command as real local processes):\n"
              f"  kubectl --kubeconfig {kc} apply -f {_examples_hint()}\n"
              f"  kubectl --kubeconfig {kc} get agents -w\n"
              f"  kubectl --kubeconfig {kc} describe agent hello\n"
              f"Their archived logs: {self.archive}/{NAMESPACE}/<agent>/<uid>/agent.log\n", file=self.out, flush=True)

    def _launch(self, cluster: Any) -> None:
        for sample in self.demo.samples:
            body = cluster.create({"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                                   "metadata": {"name": sample.name, "namespace": NAMESPACE}, "spec": sample.spec})
            sample.uid = body["metadata"]["uid"]
        # An orphan: a pod carrying our labels whose Agent never existed. Only the sweep can find it.
        env = _script([{"logB64": base64.b64encode(b"orphaned helper still running\n").decode()}, {"sleep": 3600}])
        pod = cluster.create({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "orphaned-helper", "namespace": NAMESPACE, "labels": {
                "app.kubernetes.io/managed-by": "agent-controller", "agentcontroller.dev/agent": "long-gone",
                "agentcontroller.dev/agent-uid": "00000000-dead-beef-0000-000000000000"}},
            "spec": {"terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "agent", "image": "example.com/agents/demo:1.0", "env": env}]}})
        self.demo.orphan_uid = pod["metadata"]["uid"]

    def _act(self, cluster: Any, elapsed: float, phases: dict[str, str]) -> None:
        for s in self.demo.samples:
            if s.acted or s.action_at is None or elapsed < s.action_at:
                continue
            if phases.get(s.name) not in ("Running", "Working", "Blocked"):
                continue   # act on running agents only, as a person watching would
            s.acted = True
            try:
                if s.path == "kill":
                    cluster.patch("agents", s.name, {"spec": {"terminate": True}}, NAMESPACE)
                elif s.path == "delete":
                    cluster.delete("agents", s.name, NAMESPACE)
                elif s.path == "podlost":
                    cluster.delete("pods", s.name, NAMESPACE, grace_period_seconds=0)
            except Exception as exc:  # noqa: BLE001 - the demo goes on; the summary tells
                print(f"demo: could not {s.path} {s.name}: {exc}", file=sys.stderr)

    def _rows(self, cluster: Any) -> list[tuple[str, str, str, str, str, bool]]:
        """The samples, in order; then any other Agent (applied by you), `namespace/name` outside `demo`."""
        agents = {(a["metadata"]["namespace"], a["metadata"]["name"]): a for a in cluster.list("agents")}
        rows = []
        samples = set()
        for s in self.demo.samples:
            a = agents.get((NAMESPACE, s.name))
            samples.add((NAMESPACE, s.name))
            if a is None or a["metadata"]["uid"] != s.uid:
                rows.append((s.name, "(deleted)", "", "", "Succeeded", True))
                continue
            rows.append(_row(s.name, a))
        for (ns, name), a in sorted(agents.items()):
            if (ns, name) not in samples:
                rows.append(_row(name if ns == NAMESPACE else f"{ns}/{name}", a))
        return rows

    def _draw(self, rows: list[tuple[str, str, str, str, str, bool]], elapsed: float, note: str) -> None:
        lines = [f"{'NAME':<16} {'PHASE':<11} {'PROGRESS':<9} {'POD':<14} {'CLEANUP':<10} NO-LEAKS"]
        for name, phase, progress, pod, cleanup, verified in rows[:40]:
            lines.append(f"{name:<16} {phase:<11} {progress:<9} {pod:<14} {cleanup:<10} {'yes' if verified else ''}")
        if len(rows) > 40:
            done = sum(1 for r in rows if r[5])
            lines.append(f"... and {len(rows) - 40} more ({done}/{len(rows)} cleaned up)")
        lines.append(f"[{elapsed:5.1f}s] {note}")
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        self.out.flush()

    def _watch(self, cluster: Any, ctl: Any) -> tuple[bool, str]:
        last = self._last
        orphan_reported = False
        while not self.stop.is_set():
            elapsed = time.monotonic() - self.demo.started
            rows = self._rows(cluster)
            sample_rows = rows[:len(self.demo.samples)]
            self._act(cluster, elapsed, {r[0]: r[1] for r in sample_rows})
            orphan_left = any(p["metadata"]["uid"] == self.demo.orphan_uid for p in cluster.list("pods", NAMESPACE))
            report = ctl.sweeper.last_report
            sweep_clean = report is not None and not sum(report.found.values()) and \
                ctl.sweeper.last_success is not None
            done = all(r[5] for r in sample_rows) and not orphan_left and sweep_clean
            note = "orphan pod waiting for the sweep" if orphan_left else "orphan reaped by the sweep"
            if self.tty:
                self._draw(rows, elapsed, note)
            else:
                if not orphan_left and not orphan_reported:
                    orphan_reported = True
                    print(f"[{elapsed:5.1f}s] orphaned-helper (a pod whose Agent never existed): archived and "
                          f"reaped by the sweep", file=self.out, flush=True)
                self._print_changes(rows, last, elapsed)
            if done:
                return True, "every agent cleaned up and verified, last sweep found no leak"
            if self.args.exit_when_done and elapsed > self.args.timeout:
                stuck = [r[0] for r in sample_rows if not r[5]]
                return False, (f"timed out after {self.args.timeout:.0f}s: not cleaned up: {', '.join(stuck) or '-'}"
                               + ("; orphan pod still present" if orphan_left else "")
                               + ("" if sweep_clean else "; last sweep still found leaks"))
            self.stop.wait(0.25)
        return False, "interrupted"

    def _print_changes(self, rows: list[tuple[str, str, str, str, str, bool]],
                       last: dict[str, tuple[str, str]], elapsed: float) -> None:
        for name, phase, progress, _, cleanup, verified in rows:
            state = (phase, cleanup + ("/verified" if verified else ""))
            if not phase and not cleanup:
                continue    # just created: the controller has not set its phase yet
            if last.get(name) != state:
                last[name] = state
                shown = f" progress={progress}" if progress and phase not in ("(deleted)",) else ""
                print(f"[{elapsed:5.1f}s] {name}: phase={phase or '-'}{shown} cleanup={state[1] or '-'}",
                      file=self.out, flush=True)

    def _follow(self, cluster: Any) -> None:
        """After the summary, until Ctrl-C: one line per change of the Agents you apply, and where
        each one's logs were archived."""
        sample_names = {s.name for s in self.demo.samples}
        last = self._last
        told: set[str] = set()
        shown: set[str] = {name for name in last if name not in sample_names}
        while not self.stop.is_set():
            elapsed = time.monotonic() - self.demo.started
            try:
                agents = cluster.list("agents")
            except Exception:  # noqa: BLE001 - the emulator is stopping
                return
            present: set[str] = set()
            for a in sorted(agents, key=lambda a: (a["metadata"]["namespace"], a["metadata"]["name"])):
                ns, name = a["metadata"]["namespace"], a["metadata"]["name"]
                if ns == NAMESPACE and name in sample_names:
                    continue
                label = name if ns == NAMESPACE else f"{ns}/{name}"
                present.add(label)
                self._print_changes([_row(label, a)], last, elapsed)
                cleanup = (a.get("status") or {}).get("cleanup") or {}
                uid = a["metadata"]["uid"]
                if cleanup.get("state") == "Succeeded" and uid not in told:
                    told.add(uid)
                    files = cleanup.get("archivedFiles") or []
                    if files:
                        where = (f"{len(files)} files ({cleanup.get('archivedBytes', 0)} bytes) archived in "
                                 f"{self.archive / Path(files[0]).parent}/")
                    else:
                        where = "cleaned up; logs not kept (cleanup.logs: Delete)"
                    print(f"[{elapsed:5.1f}s] {label}: {where}", file=self.out, flush=True)
            for label in sorted(shown - present):
                print(f"[{elapsed:5.1f}s] {label}: deleted", file=self.out, flush=True)
                last.pop(label, None)
            shown = present
            self.stop.wait(0.25)

    def _verify_archives(self, cluster: Any) -> tuple[int, list[str]]:
        """Every archived log must be byte-identical to what the simulated kubelet served."""
        checked, bad = 0, []
        for s in self.demo.samples:
            if not s.archive:
                continue
            log = self.archive / NAMESPACE / s.name / s.uid / "agent.log"
            if not log.is_file() and _never_had_a_pod(log.parent):
                continue      # it ended (a deadline) before its pod was created: no log was ever served
            try:
                served = cluster.kubelet.served_log(NAMESPACE, s.name, "agent")
            except Exception:  # noqa: BLE001 - the kubelet forgot the pod: compare with the script
                served = s.expected_log
            checked += 1
            if not log.is_file() or log.read_bytes() != served:
                bad.append(s.name)
        return checked, bad

    def _run_archives(self) -> list[Path]:
        """This run's archive directories (the samples' and the orphan's, by UID): an archive root
        reused across runs also holds earlier runs' archives, which this run did not write."""
        ns_dir = self.archive / NAMESPACE
        dirs = [ns_dir / s.name / s.uid for s in self.demo.samples if s.uid]
        if self.demo.orphan_uid:
            dirs.append(ns_dir / "_orphans" / self.demo.orphan_uid)
        return [d for d in dirs if (d / "MANIFEST.json").is_file()]

    def _summary(self, cluster: Any, ctl: Any, ok: bool, why: str) -> None:
        text = ctl.runtime.metrics.render().decode()
        triggers: dict[str, float] = {}
        found = reaped = archived_metric = 0.0
        for line in text.splitlines():
            if line.startswith("agent_controller_cleanups_total{") and 'result="success"' in line:
                trig = line.split('trigger="')[1].split('"')[0]
                triggers[trig] = triggers.get(trig, 0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith("agent_controller_leaks_detected_total{"):
                found += float(line.rsplit(" ", 1)[1])
            elif line.startswith("agent_controller_leaks_reaped_total{"):
                reaped += float(line.rsplit(" ", 1)[1])
            elif line.startswith("agent_controller_archived_bytes_total "):
                archived_metric = float(line.rsplit(" ", 1)[1])
        dirs = self._run_archives()
        size = sum(p.stat().st_size for d in dirs for p in d.iterdir() if p.is_file())
        if int(archived_metric) == size:
            agree = "= agent_controller_archived_bytes_total"
        elif int(archived_metric) > size:     # the metric counts every archive: yours too
            agree = f"; agent_controller_archived_bytes_total {int(archived_metric)} counts the Agents you applied too"
        else:
            agree = f"; agent_controller_archived_bytes_total says {int(archived_metric)}"
        durations = sorted(ctl.runtime.cleanup_durations)
        p50 = _quantile(durations, 0.5)
        p99 = _quantile(durations, 0.99)
        orphans = sum(1 for d in dirs if d.parent.name == "_orphans")
        print(file=self.out)
        print(("DONE: " if ok else "NOT DONE: ") + why, file=self.out)
        print(f"  agents:            {len(self.demo.samples)}", file=self.out)
        print("  cleanups:          " + ", ".join(f"{k}={int(v)}" for k, v in sorted(triggers.items()) if v),
              file=self.out)
        print(f"  archives:          {len(dirs)} ({len(dirs) - orphans} agents + {orphans} orphan pod; {size} bytes "
              f"{agree}) under {self.archive}/{NAMESPACE}/", file=self.out)
        print(f"  leaks:             {int(found)} found by the sweep, {int(reaped)} reaped", file=self.out)
        print(f"  cleanup duration:  p50 {p50:.2f}s, p99 {p99:.2f}s (terminal phase -> verifiedNoLeaks)",
              file=self.out)
        print(f"  metrics:           {ctl.metrics_url}", file=self.out)


def _row(name: str, agent: dict[str, Any]) -> tuple[str, str, str, str, str, bool]:
    st = agent.get("status") or {}
    c = st.get("cleanup") or {}
    return (name, st.get("phase") or "", str(st.get("progress", "")), st.get("podName") or "",
            c.get("state") or "", bool(c.get("verifiedNoLeaks")))


def _examples_hint() -> str:
    """Where the demo's runnable examples are (relative to the working directory when below it)."""
    if not EXAMPLES.is_dir():
        return "examples/demo/   (in the agent-controller source tree)"
    try:
        return str(EXAMPLES.relative_to(Path.cwd())) + "/"
    except ValueError:
        return str(EXAMPLES) + "/"


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[index]


def _never_had_a_pod(archive: Path) -> bool:
    """The archived agent.json says the Agent never had a pod (no podName, no startTime)."""
    try:
        status = json.loads((archive / "agent.json").read_text()).get("status") or {}
    except (OSError, ValueError):
        return False
    return not status.get("podName") and not status.get("startTime")
