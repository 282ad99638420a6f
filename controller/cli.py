"""`agent-controller run | demo`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import DEFAULT_ARCHIVE_DIR, __version__
from .cliargs import OneLineParser, port, positive_float


class JsonFormatter(logging.Formatter):
    """One JSON object per line; `extra=` fields are included."""

    _skip = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in self._skip and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(fmt: str, level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(logging.WARNING if level >= logging.INFO else level)


def add_common(parser: argparse.ArgumentParser, archive_default: str) -> None:
    parser.add_argument("--archive-dir", default=os.environ.get("AGENT_CONTROLLER_ARCHIVE_DIR", archive_default),
                        help="archive root (env AGENT_CONTROLLER_ARCHIVE_DIR; default %(default)s)")
    parser.add_argument("--metrics-port", type=port, default=9102, help="Prometheus /metrics port (%(default)s)")
    parser.add_argument("--log-format", choices=["text", "json"], default="text")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="agent-controller", description=__doc__)
    parser.add_argument("--version", action="version", version=f"agent-controller {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    run_p = sub.add_parser("run", help="run the controller against the current kubeconfig or in-cluster config")
    scope = run_p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    add_common(run_p, DEFAULT_ARCHIVE_DIR)
    run_p.add_argument("--health-port", type=port, default=8081, help="/healthz port (%(default)s)")
    run_p.add_argument("--sweep-interval", type=positive_float, default=60.0, help="seconds between sweeps (%(default)s)")
    run_p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then KUBECONFIG)")
    run_p.add_argument("--context", default=None)
    run_p.add_argument("--pod-security", choices=["restricted", "baseline", "privileged"], default="restricted",
                       help="the Pod Security Standard level agent pods are built for; podTemplate fields above it "
                            "end the agent Failed/InvalidSpec (%(default)s)")
    run_p.add_argument("--leader-election", action="store_true",
                       help="run as one of several replicas: act only while holding a coordination.k8s.io Lease")
    run_p.add_argument("--leader-election-namespace", default=None, metavar="NS",
                       help="namespace of the Lease (default: $POD_NAMESPACE, else the service account's)")
    run_p.add_argument("--leader-election-id", default=os.environ.get("AGENT_CONTROLLER_LEASE_NAME", "agent-controller"),
                       metavar="NAME", help="name of the Lease (env AGENT_CONTROLLER_LEASE_NAME; %(default)s)")
    run_p.add_argument("--leader-election-lease-duration", type=positive_float, default=15.0, metavar="S",
                       help="how long a standby waits after the leader's last renewal before taking over (%(default)s)")
    run_p.add_argument("--leader-election-renew-deadline", type=positive_float, default=10.0, metavar="S",
                       help="the leader stops acting if it could not renew for this long (%(default)s)")
    run_p.add_argument("--leader-election-retry-period", type=positive_float, default=2.0, metavar="S",
                       help="how often to renew, or to try to acquire (%(default)s)")

    run_p.add_argument("--ship-port", type=port, default=None, metavar="PORT",
                       help="serve the HTTPS endpoint agentctl run ships agent output to (off unless given; "
                            "the chart uses 9443)")
    run_p.add_argument("--ship-url", default=os.environ.get("AGENT_CONTROLLER_SHIP_URL"), metavar="URL",
                       help="the endpoint's URL as agent pods reach it, put into their env (env "
                            "AGENT_CONTROLLER_SHIP_URL; e.g. https://agent-controller-ship.NS.svc:9443/v1/ship)")
    run_p.add_argument("--ship-tls-dir", default=os.environ.get("AGENT_CONTROLLER_SHIP_TLS_DIR"), metavar="DIR",
                       help="tls.crt, tls.key and ca.crt of the endpoint (the chart's Secret); made there if "
                            "missing (env AGENT_CONTROLLER_SHIP_TLS_DIR; default: a new directory)")

    un_p = sub.add_parser("uninstall", help="before (or after) uninstalling: the Agents the finalizer still holds")
    un_p.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                      help="only this namespace (repeatable; default: all)")
    un_p.add_argument("--release-finalizers", action="store_true",
                      help="remove agentcontroller.dev/cleanup from Agents being deleted (their logs are NOT "
                           "archived): the way out when the controller is gone")
    un_p.add_argument("--all", action="store_true", help="with --release-finalizers: also from Agents not being deleted")
    un_p.add_argument("--dry-run", action="store_true", help="list what would be released, change nothing")
    un_p.add_argument("--kubeconfig", default=None)
    un_p.add_argument("--context", default=None)

    from .demo import add_demo_parser

    add_demo_parser(sub)
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (a dependency; AGENT_CONTROLLER_LOOP=asyncio opts out): the controller's
    time goes to HTTP requests and watch events, where uvloop's C transports cost much less."""
    if os.environ.get("AGENT_CONTROLLER_LOOP", "").lower() == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _raise_open_files_limit() -> None:
    """Every cleanup in flight holds a pod-log stream (a connection): allow up to the hard limit."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ImportError, ValueError, OSError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import main as demo_main

        return demo_main(args)
    if args.command == "uninstall":
        return _uninstall(args)
    setup_logging(args.log_format, logging.DEBUG if args.verbose else logging.INFO)
    _raise_open_files_limit()
    _without_kubernetes_client()
    from .operator import Options

    options = Options(namespaces=args.namespace, archive_dir=args.archive_dir, metrics_port=args.metrics_port,
                      health_port=args.health_port, sweep_interval=args.sweep_interval,
                      kubeconfig=args.kubeconfig, context=args.context, pod_security=args.pod_security,
                      leader_election=args.leader_election,
                      leader_election_namespace=args.leader_election_namespace,
                      leader_election_id=args.leader_election_id,
                      lease_duration=args.leader_election_lease_duration,
                      renew_deadline=args.leader_election_renew_deadline,
                      retry_period=args.leader_election_retry_period,
                      ship_port=args.ship_port, ship_url=args.ship_url, ship_tls_dir=args.ship_tls_dir)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_run_until_signal(options))
    except KeyboardInterrupt:
        return 130
    except RuntimeError as exc:
        from .operator import LeaseLost

        if not isinstance(exc, LeaseLost):
            raise
        print(f"agent-controller: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"agent-controller: {exc}", file=sys.stderr)
        return 1
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from .kube.client import ClientConfig
    from .uninstall import uninstall_command

    try:
        config = ClientConfig.load(args.kubeconfig, args.context)
        return asyncio.run(uninstall_command(config, args.namespace or None, release=args.release_finalizers,
                                             all_agents=args.all, dry_run=args.dry_run, out=sys.stdout))
    except OSError as exc:
        print(f"agent-controller: {exc}", file=sys.stderr)
        return 2


def _without_kubernetes_client() -> None:
    """kopf imports the official `kubernetes` client when it is installed (agentctl needs it), only to
    recognise its generated model objects in `kopf.adopt()`, which the controller never passes: ~22 MB
    of resident memory for nothing. Its configuration is loaded in a child process (kube/config.py),
    so the controller's process blocks the import (the standard `None` entry in sys.modules)."""
    if "kopf" not in sys.modules:
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]


LEASE_LOST_EXIT_SECONDS = 10.0   # a replica that lost its Lease exits within this, stopping done or not


async def _run_until_signal(options: Any) -> None:
    """kopf stops the operator on SIGINT/SIGTERM itself (its handlers, in the main thread). A stop flag
    of our own would be left unset and kopf would wait 5 s for its waiter task before exiting."""
    from .operator import run

    await run(options, exit_after_lease_lost=LEASE_LOST_EXIT_SECONDS)


if __name__ == "__main__":
    raise SystemExit(main())
