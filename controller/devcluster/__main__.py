"""``python -m controller.devcluster serve --port P --kubeconfig-out F [--crd FILE]...``"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from . import DevCluster


def main(argv: list[str] | None = None) -> int:
    """Serve a devcluster until SIGINT/SIGTERM."""
    ap = argparse.ArgumentParser(prog="python -m controller.devcluster", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="serve the Kubernetes API emulator")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    s.add_argument("--kubeconfig-out", help="write an admin kubeconfig here")
    s.add_argument("--crd", action="append", default=[], help="apply this manifest at start (repeatable)")
    s.add_argument("--no-gc", action="store_true", help="disable owner-reference garbage collection")
    s.add_argument("--pod-start-delay", type=float, default=0.05)
    s.add_argument("--no-local-processes", action="store_true",
                   help="do not run containers of sim.local/ images as local processes (docs/nodesim.md)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cluster = DevCluster(host=args.host, port=args.port, gc=not args.no_gc, pod_start_delay=args.pod_start_delay,
                         node_options={"local_processes": not args.no_local_processes})
    cluster.start()
    for f in args.crd:
        cluster.apply_file(f)
    if args.kubeconfig_out:
        cluster.kubeconfig_path(args.kubeconfig_out)
    print(f"devcluster serving at {cluster.url}" + (f" and {cluster.https_url}" if cluster.https_url else ""), flush=True)
    if args.kubeconfig_out:
        print(f"kubeconfig: {args.kubeconfig_out}", flush=True)
    done = threading.Event()

    def stop(*_: object) -> None:
        done.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not done.wait(1.0):
        pass
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
