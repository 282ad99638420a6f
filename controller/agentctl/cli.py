"""``agentctl``: the command-line tool used inside agent pods.

    agentctl report --phase P [--progress N] [--message M] [--reason R]
    agentctl kill NAME [-n NS]
    agentctl run -- CMD ARGS...

Errors are one line on stderr, never a traceback. Exit codes: 0 success, 1 failure (API
errors), 2 usage errors; ``run`` exits with the child's code (128+N for signal N).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from controller.agentctl import __version__
from controller.agentctl.args import OneLineParser as _Parser
from controller.agentctl.args import int_in
from controller.agentctl.status import AGENT_PHASES, StatusError, UsageError

_progress = int_in(0, 100, "progress")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``agentctl``."""
    parser = _Parser(prog="agentctl", description="Agent-side tool of agent-controller.")
    parser.add_argument("--version", action="version", version=f"agentctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{report,kill,run}", parser_class=_Parser)
    sub.required = True

    rep = sub.add_parser(
        "report",
        help="report this agent's phase/progress to its Agent status",
        description="Report this agent's phase to its Agent status (uses AGENT_NAME/AGENT_NAMESPACE "
        "and the pod's own credentials). A terminal phase already there is never overwritten.",
    )
    rep.add_argument("--phase", required=True, choices=AGENT_PHASES, help="the phase to report")
    rep.add_argument("--progress", type=_progress, help="progress 0..100")
    rep.add_argument("--message", help="human-readable message")
    rep.add_argument("--reason", help="short CamelCase reason")

    kill = sub.add_parser(
        "kill",
        help="kill an agent (sets spec.terminate: true)",
        description="Kill an agent: sets spec.terminate: true; the controller terminates and cleans it up. "
        "An agent that already ended is left as it is (exit 0).",
    )
    kill.add_argument("name", help="name of the Agent")
    kill.add_argument("-n", "--namespace", help="namespace (default: the kubeconfig context's, else 'default')")

    run = sub.add_parser(
        "run",
        help="run the agent command as a supervised child (PID 1 entrypoint)",
        description="Run CMD as a supervised child: forwards signals, reaps zombies, on SIGTERM "
        "gives the tree AGENT_GRACE_SECONDS then kills what is left, and reports "
        "Completed/Failed to the Agent status when CMD exits (if AGENT_NAME is set).",
        usage="agentctl run [-h] -- CMD [ARGS...]",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD ARGS", help="the command to run")
    return parser


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    if args.command == "run":
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            raise UsageError("run: no command given (usage: agentctl run -- CMD [ARGS...])")
        from controller.agentctl.supervise import run

        return run(cmd)

    from controller.agentctl import status

    if args.command == "report":
        result = status.report(args.phase, progress=args.progress, message=args.message, reason=args.reason)
        if not result.written:
            sys.stderr.write(f"agentctl: agent already reached terminal phase {result.phase}; "
                             f"not reporting {args.phase}\n")
        return 0
    if args.command == "kill":
        ns = args.namespace or status.default_namespace()
        killed = status.kill(args.name, ns)
        if not killed.requested:
            sys.stdout.write(f"agent.agentcontroller.dev/{args.name} already ended ({killed.phase}); "
                             "nothing to kill\n")
        else:
            sys.stdout.write(f"agent.agentcontroller.dev/{args.name} terminate requested (namespace {ns})\n")
        return 0
    raise UsageError(f"unknown command {args.command!r}")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Console-script entry point."""
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        sys.stderr.write(f"agentctl: error: {exc}\n")
        code = 2
    except StatusError as exc:
        sys.stderr.write(f"agentctl: error: {exc}\n")
        code = 1
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:  # noqa: BLE001 - one line, never a traceback
        msg = " ".join(str(exc).split()) or type(exc).__name__
        sys.stderr.write(f"agentctl: error: {type(exc).__name__}: {msg}\n")
        code = 1
    try:
        sys.stdout.flush()
    except OSError:
        pass
    sys.exit(code)


if __name__ == "__main__":
    main()
