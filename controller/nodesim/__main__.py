"""``python -m controller.nodesim``: simulated nodes for a real kube-apiserver, as a process.

Prints ``ready`` once every node is registered and has listed its pods, then runs until SIGINT or
SIGTERM and stops its containers (local processes included). See docs/nodesim.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .behaviour import FOLLOW_AT_ROTATION, parse_quantity


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m controller.nodesim", description=__doc__)
    ap.add_argument("--kubeconfig", help="credentials for every node (use --node for one kubeconfig per node)")
    ap.add_argument("--nodes", type=int, default=1, help="how many nodes with --kubeconfig (default 1)")
    ap.add_argument("--name-prefix", default="nodesim-", help="node names: PREFIX1..PREFIXN (default nodesim-)")
    ap.add_argument("--node", action="append", default=[], metavar="NAME=KUBECONFIG",
                    help="a node and its own credentials (system:node:NAME); repeatable")
    ap.add_argument("--kubelet-cert", help="serving certificate of the kubelet API (default: self-signed)")
    ap.add_argument("--kubelet-key", help="its key")
    ap.add_argument("--client-ca", help="CA of the API server's kubelet client certificate (default: any client)")
    ap.add_argument("--log-max-size", default="10Mi", help="containerLogMaxSize (default 10Mi; 0: never rotate)")
    ap.add_argument("--follow-at-rotation", choices=FOLLOW_AT_ROTATION, default="stall")
    ap.add_argument("--gc-after-exit", type=float, default=None, metavar="SECONDS",
                    help="garbage-collect exited containers after SECONDS (default: never)")
    ap.add_argument("--heartbeat-seconds", type=float, default=10.0)
    ap.add_argument("--max-pods", type=int, default=110)
    ap.add_argument("--workdir", help="where local-process pods get their directories (default: the temp dir)")
    ap.add_argument("--no-local-processes", action="store_true", help="do not run sim.local/ images as processes")
    args = ap.parse_args(argv)

    from .sim import NodeSimulator

    nodes: dict[str, Any] = {}
    for spec in args.node:
        name, sep, kc = spec.partition("=")
        if not sep or not name or not kc:
            ap.error(f"--node {spec!r}: expected NAME=KUBECONFIG")
        nodes[name] = kc
    if not nodes:
        if not args.kubeconfig:
            ap.error("give --kubeconfig or --node NAME=KUBECONFIG")
        nodes = {f"{args.name_prefix}{i}": args.kubeconfig for i in range(1, args.nodes + 1)}
    size = None if args.log_max_size in ("0", "") else parse_quantity(args.log_max_size)
    sim = NodeSimulator(
        nodes, kubelet_cert=args.kubelet_cert, kubelet_key=args.kubelet_key, client_ca=args.client_ca,
        container_log_max_size=size, follow_at_rotation=args.follow_at_rotation, gc_after_exit=args.gc_after_exit,
        heartbeat_seconds=args.heartbeat_seconds, max_pods=args.max_pods, workdir=args.workdir,
        local_processes=not args.no_local_processes,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        sim.start()
    except RuntimeError as e:
        print(f"nodesim: {e}", file=sys.stderr)
        return 1
    for name in sim.node_names:
        print(f"node {name} kubelet port {sim.kubelet_port(name)}", flush=True)
    print("ready", flush=True)
    stop.wait()
    sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
