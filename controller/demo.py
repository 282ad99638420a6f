"""`agent-controller demo`: the whole product working, with no cluster.

Starts the in-process Kubernetes API emulator and simulated kubelet, runs the real controller (the
same code as `agent-controller run`, with its metrics and sweep) against it, launches sample agents
that take every path — report Completed while running, exit 0, exit 1, killed, deadline, deleted
mid-run, pod lost, plus an orphan pod for the sweep — and shows their cleanup live.
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
    p.add_argument("--kubeconfig-out", metavar="FILE",
                   help="write a kubeconfig for the emulator (then: kubectl --kubeconfig FILE get agents -w)")
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
                cluster.kubeconfig_path(self.args.kubeconfig_out, user="admin")
            options = Options(namespaces=[NAMESPACE], archive_dir=str(self.archive),
                              metrics_port=self.args.metrics_port, health_port=self.args.health_port,
                              sweep_interval=3.0, sweep_timeout=30.0, listen_host="127.0.0.1",
                              force_delete_after=30.0)
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
            print(f"\nStill serving metrics at {ctl.metrics_url} — press Ctrl-C to stop.", file=self.out)
            self.stop.wait()
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
        print(f"  API server: {cluster.url}   metrics: {ctl.metrics_url}   archive: {self.archive}", file=self.out)
        if self.args.kubeconfig_out:
            print(f"  watch along: kubectl --kubeconfig {self.args.kubeconfig_out} get agents -n {NAMESPACE} -w",
                  file=self.out)
        print(file=self.out)

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
        agents = {a["metadata"]["name"]: a for a in cluster.list("agents", NAMESPACE)}
        rows = []
        for s in self.demo.samples:
            a = agents.get(s.name)
            if a is None or a["metadata"]["uid"] != s.uid:
                gone = True
                rows.append((s.name, "(deleted)", "", "", "Succeeded" if gone else "", gone))
                continue
            st = a.get("status") or {}
            c = st.get("cleanup") or {}
            rows.append((s.name, st.get("phase") or "", str(st.get("progress", "")), st.get("podName") or "",
                         c.get("state") or "", bool(c.get("verifiedNoLeaks"))))
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
        last: dict[str, tuple[str, str]] = {}
        orphan_reported = False
        while not self.stop.is_set():
            elapsed = time.monotonic() - self.demo.started
            rows = self._rows(cluster)
            self._act(cluster, elapsed, {r[0]: r[1] for r in rows})
            orphan_left = any(p["metadata"]["uid"] == self.demo.orphan_uid for p in cluster.list("pods", NAMESPACE))
            report = ctl.sweeper.last_report
            sweep_clean = report is not None and not sum(report.found.values()) and \
                ctl.sweeper.last_success is not None
            done = all(r[5] for r in rows) and not orphan_left and sweep_clean
            note = "orphan pod waiting for the sweep" if orphan_left else "orphan reaped by the sweep"
            if self.tty:
                self._draw(rows, elapsed, note)
            else:
                if not orphan_left and not orphan_reported:
                    orphan_reported = True
                    print(f"[{elapsed:5.1f}s] orphaned-helper (a pod whose Agent never existed): archived and "
                          f"reaped by the sweep", file=self.out, flush=True)
                for name, phase, _, _, cleanup, verified in rows:
                    state = (phase, cleanup + ("/verified" if verified else ""))
                    if last.get(name) != state:
                        last[name] = state
                        print(f"[{elapsed:5.1f}s] {name}: phase={phase or '-'} cleanup={state[1] or '-'}",
                              file=self.out, flush=True)
            if done:
                return True, "every agent cleaned up and verified, last sweep found no leak"
            if self.args.exit_when_done and elapsed > self.args.timeout:
                stuck = [r[0] for r in rows if not r[5]]
                return False, (f"timed out after {self.args.timeout:.0f}s: not cleaned up: {', '.join(stuck) or '-'}"
                               + ("; orphan pod still present" if orphan_left else "")
                               + ("" if sweep_clean else "; last sweep still found leaks"))
            self.stop.wait(0.25)
        return False, "interrupted"

    def _verify_archives(self, cluster: Any) -> tuple[int, list[str]]:
        """Every archived log must be byte-identical to what the simulated kubelet served."""
        checked, bad = 0, []
        for s in self.demo.samples:
            if not s.archive:
                continue
            log = self.archive / NAMESPACE / s.name / s.uid / "agent.log"
            try:
                served = cluster.kubelet.served_log(NAMESPACE, s.name, "agent")
            except Exception:  # noqa: BLE001 - the kubelet forgot the pod: compare with the script
                served = s.expected_log
            checked += 1
            if not log.is_file() or log.read_bytes() != served:
                bad.append(s.name)
        return checked, bad

    def _summary(self, cluster: Any, ctl: Any, ok: bool, why: str) -> None:
        text = ctl.runtime.metrics.render().decode()
        triggers: dict[str, float] = {}
        found = reaped = 0.0
        for line in text.splitlines():
            if line.startswith("agent_controller_cleanups_total{") and 'result="success"' in line:
                trig = line.split('trigger="')[1].split('"')[0]
                triggers[trig] = triggers.get(trig, 0) + float(line.rsplit(" ", 1)[1])
            elif line.startswith("agent_controller_leaks_detected_total{"):
                found += float(line.rsplit(" ", 1)[1])
            elif line.startswith("agent_controller_leaks_reaped_total{"):
                reaped += float(line.rsplit(" ", 1)[1])
        files = list(self.archive.glob(f"{NAMESPACE}/**/MANIFEST.json"))
        size = sum(p.stat().st_size for m in files for p in m.parent.iterdir() if p.is_file())
        durations = sorted(ctl.runtime.cleanup_durations)
        p50 = _quantile(durations, 0.5)
        p99 = _quantile(durations, 0.99)
        print(file=self.out)
        print(("DONE: " if ok else "NOT DONE: ") + why, file=self.out)
        print(f"  agents:            {len(self.demo.samples)}", file=self.out)
        print("  cleanups:          " + ", ".join(f"{k}={int(v)}" for k, v in sorted(triggers.items()) if v),
              file=self.out)
        print(f"  archives:          {len(files)} ({size} bytes) under {self.archive}/{NAMESPACE}/", file=self.out)
        print(f"  leaks:             {int(found)} found by the sweep, {int(reaped)} reaped", file=self.out)
        print(f"  cleanup duration:  p50 {p50:.2f}s, p99 {p99:.2f}s (terminal phase -> verifiedNoLeaks)",
              file=self.out)
        print(f"  metrics:           {ctl.metrics_url}", file=self.out)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    index = min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))
    return values[index]
