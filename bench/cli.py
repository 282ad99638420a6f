"""`python -m bench`: measure agent-controller (burst, idle latency, API cost, scale).

Runs against the in-process API emulator by default, or against any cluster with --kubeconfig.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import platform
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backends import ClusterBackend, EmulatorBackend, machine_info, make_workdir
from .report import strip_samples, write_all
from .scenarios import Env, Sizes, burst, idle, scale

log = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results"
PHASES = ("anchor", "burst", "idle", "scale", "chaos", "ship")
DEFAULT_PHASES = ("burst", "idle", "scale")   # anchor: with --backend control-plane


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--agents", type=int, default=None, metavar="N",
                   help="burst size, and the anchor's Jobs and Agents (default 1000; --quick: 10)")
    p.add_argument("--idle-agents", type=int, default=None, metavar="N",
                   help="idle-latency runs, one agent at a time (default 100; --quick: 6)")
    p.add_argument("--scale", default=None, metavar="N,N,...",
                   help="Agents present for the RSS/sweep steps (default 1000,2000,10000; --quick: 20,40)")
    p.add_argument("--sweep-interval", type=float, default=None,
                   help="the scale controller's --sweep-interval (default 15; --quick: 1)")
    p.add_argument("--phases", default=None,
                   help=f"comma-separated subset of {','.join(PHASES)} (idle also measures the API cost; anchor "
                        "compares with kube-controller-manager's TTL-after-finished controller, on the control "
                        f"plane only; chaos: every fault at once, then the promise checked — runs alone, bench/chaos.py). "
                        f"Default: {','.join(DEFAULT_PHASES)}, and anchor first on the control plane")
    p.add_argument("--backend", choices=("emulator", "control-plane"), default="emulator",
                   help="emulator (default): the in-process API emulator; control-plane: the project's real "
                        "kube-apiserver/etcd/controller-manager/scheduler (scripts/install-control-plane.sh) "
                        "with two simulated nodes, started and stopped by the bench")
    p.add_argument("--kubeconfig", default=None, metavar="FILE",
                   help="run against this cluster (creates and deletes its own namespaces) instead of the emulator")
    p.add_argument("--context", default=None, help="kubeconfig context (with --kubeconfig)")
    p.add_argument("--image", default="busybox:1.36",
                   help="agent image with --kubeconfig (needs sh; default %(default)s)")
    p.add_argument("--output", default=None, metavar="FILE",
                   help="JSON result (default bench/results/<date>-<machine>.json); .md and .png next to it")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds")
    p.add_argument("--keep-workdir", action="store_true", help="keep controller logs and archives")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="profile the controller with py-spy during the burst (raw collapsed stacks into DIR)")
    p.add_argument("--seed", type=int, default=1, help="the chaos phase's schedule (default %(default)s)")
    p.add_argument("--kills", type=int, default=20, help="the chaos phase's controller SIGKILLs (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def sizes_from(args: argparse.Namespace) -> Sizes:
    if args.quick:
        s = Sizes(burst=10, idle=6, scale=(20, 40), sweep_interval=1.0)
    else:
        s = Sizes()
    if args.agents is not None:
        s.burst = args.agents
    if args.idle_agents is not None:
        s.idle = args.idle_agents
    if args.scale:
        s.scale = tuple(int(x) for x in args.scale.split(",") if x.strip())
    if args.sweep_interval is not None:
        s.sweep_interval = args.sweep_interval
    return s


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.phases is None:
        phases = list(PHASES if args.backend == "control-plane" else DEFAULT_PHASES)
    else:
        phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise SystemExit(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.backend == "control-plane" and args.kubeconfig:
        raise SystemExit("--backend control-plane starts a control plane of its own: without --kubeconfig")
    if "anchor" in phases and args.backend != "control-plane":
        raise SystemExit("the anchor phase needs --backend control-plane (kube-controller-manager on the same "
                         "API server); emulator figures are no comparison")
    if "ship" in phases:
        if phases != ["ship"]:
            raise SystemExit("the ship phase runs alone (bench/ship.py: the ship endpoint and agentctl run's "
                             "shipper, no API server): --phases ship")
        from .ship import ship_phase

        agents = args.agents if args.agents is not None else (2 if args.quick else 20)
        report = await ship_phase(agents, 5 if args.quick else 50)
        log.info("ship: %s", _brief(report))
        out: dict[str, Any] = {"backend": report["backend"], "date": datetime.date.today().isoformat(),
                               "quick": bool(args.quick), "machine": machine_info(), "ship": report}
        for key in ("anchor", "burst", "idle", "api", "scale"):
            out.setdefault(key, None)
        return out | {"_samples": {}}
    if "chaos" in phases:
        if phases != ["chaos"] or args.kubeconfig:
            raise SystemExit("the chaos phase runs alone, on --backend emulator or control-plane (it builds, "
                             "breaks and restarts its own world)")
        return await run_chaos(args)
    workdir = make_workdir()
    stop_control_plane = None
    local = None
    if args.backend == "control-plane":
        args.kubeconfig, stop_control_plane, local = start_control_plane(
            workdir / "controlplane", audit="anchor" in phases, pods=sizes_from(args).burst)
    backend: EmulatorBackend | ClusterBackend = (
        ClusterBackend(args.kubeconfig, args.image, args.context) if args.kubeconfig else EmulatorBackend())
    if stop_control_plane is not None:
        backend.name = "control-plane"      # (a ClusterBackend on our own real control plane)
    env = Env(backend=backend, workdir=workdir, sizes=sizes_from(args),
              profile_dir=Path(args.profile) if args.profile else None)
    result: dict[str, Any] = {
        "backend": backend.name,
        "date": datetime.date.today().isoformat(),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": bool(args.quick),
        "pod_path": backend.pod_path_label,    # how the "pod" half of the agents ends
        "machine": machine_info(),
        "sizes": {"burst": env.sizes.burst, "idle": env.sizes.idle, "scale": list(env.sizes.scale),
                  "sweep_interval": env.sizes.sweep_interval},
    }
    samples: dict[str, Any] = {}
    began = time.monotonic()
    try:
        await backend.setup(workdir)
        if isinstance(backend, ClusterBackend):
            result["server"] = backend.client.server if backend.client else None
        if "anchor" in phases:
            from .anchor import anchor

            assert local is not None
            log.info("anchor: %d Jobs (kube-controller-manager), then %d Agents (ours)", env.sizes.burst,
                     env.sizes.burst)
            result["anchor"] = await anchor(env, local, env.sizes.burst)
            log.info("anchor: %s", _brief(result["anchor"]))
        if "burst" in phases:
            log.info("burst: %d agents", env.sizes.burst)
            result["burst"] = await burst(env)
            samples["burst"] = result["burst"].get("_samples", {})
            log.info("burst: %s", _brief(result["burst"]))
        if "idle" in phases:
            log.info("idle: %d agents, one at a time", env.sizes.idle)
            result["idle"], result["api"] = await idle(env)
            samples["idle"] = result["idle"].get("_samples", {})
            log.info("idle: %s", _brief(result["idle"]))
            log.info("api: %s", _brief(result["api"]))
        if "scale" in phases:
            log.info("scale: %s Agents", ",".join(map(str, env.sizes.scale)))
            result["scale"] = await scale(env)
            log.info("scale: %s", _brief(result["scale"]))
    finally:
        await backend.teardown()
        if stop_control_plane is not None:
            stop_control_plane()
        if args.keep_workdir:
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    from .backends import calibration_ms

    result["machine"]["calibration_ms_end"] = calibration_ms()
    result["notes"] = env.notes
    result["elapsed_seconds"] = round(time.monotonic() - began, 1)
    for key in ("anchor", "burst", "idle", "api", "scale"):
        result.setdefault(key, None)
    return strip_samples(result) | {"_samples": samples}


async def run_chaos(args: argparse.Namespace) -> dict[str, Any]:
    """The chaos phase (bench/chaos.py): N agents (default 1000; --quick: 30) through every fault."""
    from .backends import calibration_ms
    from .chaos import chaos_phase

    agents = args.agents if args.agents is not None else (30 if args.quick else 1000)
    workdir = make_workdir()
    result: dict[str, Any] = {"backend": args.backend, "date": datetime.date.today().isoformat(),
                              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                              "quick": bool(args.quick), "machine": machine_info()}
    began = time.monotonic()
    try:
        report = await chaos_phase(args.backend, workdir, agents, args.seed, kills=args.kills)
    finally:
        if args.keep_workdir:
            result["workdir"] = str(workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report.pop("metrics", None)
    result["chaos"] = report
    log.info("chaos: %s", "OK" if report["ok"] else f"{len(report['violations'])} violations")
    result["machine"]["calibration_ms_end"] = calibration_ms()
    result["elapsed_seconds"] = round(time.monotonic() - began, 1)
    for key in ("anchor", "burst", "idle", "api", "scale"):
        result.setdefault(key, None)
    return result | {"_samples": {}}


def start_control_plane(workdir: Path, audit: bool = False, pods: int = 0) -> tuple[str, Any, Any]:
    """The project's real control plane (controller/controlplane) with two simulated nodes:
    (admin kubeconfig, a callable that stops it all, the anchor's handle on it). With `audit`, the
    API server writes an audit log (the anchor counts kube-controller-manager's requests in it). Each
    node takes `pods` pods besides a margin (the anchor's N Jobs' pods run at once), at least 110."""
    from controller.controlplane import ControlPlane, ensure_binaries
    from controller.nodesim.sim import start_nodes

    from .anchor import LocalControlPlane, audit_args

    extra, audit_log = audit_args(workdir / "audit") if audit else ({}, workdir / "audit" / "none")
    cp = ControlPlane(workdir=workdir, bin_dir=ensure_binaries(), die_with_parent=True, extra_args=extra).start()
    try:
        nodes = start_nodes(cp, 2, heartbeat_seconds=5.0, workdir=str(workdir / "pods"), max_pods=max(110, pods + 20))
    except BaseException:
        cp.stop()
        raise

    def stop() -> None:
        nodes.stop()
        cp.stop()

    log.info("control plane: %s, nodes %s", cp.url, ", ".join(nodes.node_names))
    return str(cp.admin_kubeconfig), stop, LocalControlPlane(cp, nodes, audit_log)


def _brief(d: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in d.items() if not isinstance(v, (dict, list))})


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.output:
        out = Path(args.output)
    else:
        out = RESULTS / f"{datetime.date.today().isoformat()}-{platform.node() or 'machine'}.json"
    result = asyncio.run(run(args))
    samples = result.pop("_samples")
    outputs = write_all(result, samples, out)
    for kind, path in outputs.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
