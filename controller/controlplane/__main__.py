"""``python -m controller.controlplane --kubeconfig-out FILE [--nodes N] [--workdir DIR]``

Builds the binaries if needed (scripts/install-control-plane.sh), starts etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on loopback, writes an admin kubeconfig to FILE, starts
N simulated nodes when the node simulator (controller.nodesim) provides them, prints ``ready`` on
stdout once the API server answers (and the nodes are Ready), and runs until SIGINT or SIGTERM —
or until its parent process dies, or one of its processes exits — then stops every process it
started. Exit status: 0 after a signal, 1 on a failure, 3 when the binaries are missing and Go is
not on PATH.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from .binaries import NO_GO_STATUS, BinariesUnavailable, BuildFailed
from .cluster import ControlPlane, ControlPlaneError


class _Interrupted(Exception):
    """SIGINT/SIGTERM while building or starting."""


def _set_parent_death_signal() -> None:
    """Linux: SIGTERM this process when its parent dies, so a killed parent does not leave the
    control plane running (the signal handler then stops it cleanly)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def start_nodes(cp: ControlPlane, count: int) -> Callable[[], None] | None:
    """``count`` simulated nodes (controller.nodesim) on ``cp``, Ready when this returns; the callable
    that stops them (None for no nodes)."""
    if count <= 0:
        return None
    from controller.nodesim.sim import start_nodes as start

    return start(cp, count).stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.controlplane",
                                 description="Run a real Kubernetes control plane on loopback until SIGINT/SIGTERM.")
    ap.add_argument("--kubeconfig-out", required=True, help="write the admin kubeconfig here")
    ap.add_argument("--nodes", type=int, default=1, help="simulated nodes to start (default 1; 0: none)")
    ap.add_argument("--workdir", help="certificates, etcd data and logs (default: a temporary directory, removed "
                                      "at exit; a given directory is kept and reused)")
    ap.add_argument("--prefix", help="tools prefix for the binaries (default: the repository's .tools)")
    ap.add_argument("--node-monitor-grace-period", type=float, default=50.0, metavar="SECONDS",
                    help="seconds without heartbeats before a node is marked NotReady (default 50)")
    args = ap.parse_args(argv)

    stop = threading.Event()
    starting = [True]

    def on_signal(*_: object) -> None:
        stop.set()
        if starting[0]:             # interrupt a build or a start: the finally clause cleans up
            raise _Interrupted

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    parent = os.getppid()
    _set_parent_death_signal()
    if os.getppid() != parent:                     # the parent died before the line above
        return 1

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    cp = ControlPlane(workdir=args.workdir, prefix=args.prefix, die_with_parent=True,
                      node_monitor_grace_period=args.node_monitor_grace_period)
    stop_nodes: Callable[[], None] | None = None
    status = 0
    try:
        cp.start()
        print(f"controlplane: started in {cp.startup_seconds:.1f}s at {cp.url} (workdir {cp.workdir})",
              file=sys.stderr, flush=True)
        out = Path(args.kubeconfig_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        shutil.copyfile(cp.admin_kubeconfig, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, out)
        stop_nodes = start_nodes(cp, args.nodes)
        starting[0] = False
        if not stop.is_set():
            print("ready", flush=True)
        while not stop.wait(0.5):
            dead = [name for name, up in cp.running().items() if not up]
            if dead:
                print(f"controlplane: {', '.join(dead)} exited; stopping (logs in {cp.logs})", file=sys.stderr,
                      flush=True)
                status = 1
                break
            if os.getppid() != parent:
                break
    except _Interrupted:
        pass
    except BinariesUnavailable as exc:
        print(f"controlplane: {exc}", file=sys.stderr, flush=True)
        status = NO_GO_STATUS
    except (BuildFailed, ControlPlaneError, OSError) as exc:
        print(f"controlplane: {exc}", file=sys.stderr, flush=True)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)    # a second Ctrl-C must not interrupt the cleanup
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if stop_nodes is not None:
            try:
                stop_nodes()
            except Exception as exc:  # noqa: BLE001 - the control plane must still be stopped
                print(f"controlplane: stopping the nodes: {exc}", file=sys.stderr, flush=True)
        cp.stop(remove_workdir=None if status == 0 else False)
    return status


if __name__ == "__main__":
    sys.exit(main())
