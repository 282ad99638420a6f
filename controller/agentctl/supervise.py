"""``agentctl run``: a correct PID 1 for agent containers.

The supervisor

* starts the agent command as a child in its own process group, inheriting stdin; its stdout and
  stderr pass through pipes that the supervisor copies to its own, unchanged and as they come, and
  counts (``status.output``: what the agent's process wrote, reported with its final phase, so the
  controller can tell whether the archived log holds every byte). On a terminal the child inherits
  stdout/stderr as they are (nothing is counted);
* blocks the signals it handles and takes them synchronously with ``sigtimedwait`` — no
  asynchronous handlers, no races with ``waitpid``;
* forwards SIGTERM, SIGINT, SIGHUP (and SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH) to the child's
  process group;
* reaps every process re-parented to it: as PID 1, or anywhere thanks to
  ``PR_SET_CHILD_SUBREAPER``;
* on SIGTERM gives the process tree the grace period (``AGENT_GRACE_SECONDS``, default 5, less a
  small reserve for the final kill and check), then SIGKILLs the process group and every other
  descendant found in ``/proc``, and verifies that nothing survives (one line on stderr);
* when ``AGENT_CONTROLLER_SHIP_URL`` is set (and output is piped), also ships the combined output
  to the controller as it is read (:mod:`controller.agentctl.ship`: a bounded in-memory spool and
  one background thread; never blocks or changes the passthrough), and once the tree is gone — and
  the outcome reported, byte counts included, so that the controller knows what to wait for — sends
  the rest and the end of it, waiting at most ``AGENT_SHIP_FLUSH_SECONDS`` (default 300; after a
  SIGTERM at most what is left of the grace period, at least 1 s);
* when the child exits on its own, terminates stray descendants the same way, reports
  ``Completed``/``Failed`` to the Agent's status (only when ``AGENT_NAME`` is set) and exits with
  the child's code (128+N when it was killed by signal N).

Standard library only: the process tree is read from ``/proc`` (Linux), see :func:`processes`.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from controller.agentctl import ship

PR_SET_CHILD_SUBREAPER = 36
DEFAULT_GRACE_SECONDS = 5.0
MAX_RESERVE_SECONDS = 0.5
"""Part of the grace period kept back for SIGKILL, reaping and the final check."""
KILL_WAIT_SECONDS = 5.0
"""How long to wait for SIGKILLed processes to disappear before declaring survivors."""
REPORT_SECONDS = 5.0
"""Total time spent retrying the final status report (API down) before giving up."""
POLL_SECONDS = 1.0

FORWARDED: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
HANDLED: frozenset[int] = frozenset({*FORWARDED, signal.SIGCHLD})


def say(line: str) -> None:
    """Write one line to stderr, unbuffered, prefixed ``agentctl:``; never raise."""
    try:
        os.write(2, f"agentctl: {line}\n".encode("utf-8", "replace"))
    except OSError:
        pass


def set_child_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (Linux ``prctl``); True on success."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


# ------------------------------------------------------------------ /proc

PROC = "/proc"
STATES = {
    "R": "running", "S": "sleeping", "D": "disk-sleep", "T": "stopped", "t": "tracing-stop",
    "Z": "zombie", "X": "dead", "x": "dead", "K": "wake-kill", "W": "waking", "P": "parked",
    "I": "idle",
}
"""``/proc/PID/stat`` states, named as ``ps`` (and psutil) name them."""


@dataclass(frozen=True)
class Proc:
    """One process as ``/proc/PID/stat`` showed it."""

    pid: int
    comm: str
    state: str
    ppid: int
    pgrp: int
    start: int
    """Start time in clock ticks since boot: with the pid, identifies the process (pids are reused)."""

    @property
    def status(self) -> str:
        return STATES.get(self.state, self.state)

    def name(self) -> str:
        """The process name: ``comm``, or the program's name from its command line when ``comm``
        was cut to 15 characters."""
        if len(self.comm) >= 15:
            try:
                with open(f"{PROC}/{self.pid}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0", 1)[0].decode("utf-8", "replace")
                base = os.path.basename(argv0)
                if base.startswith(self.comm):
                    return base
            except OSError:
                pass
        return self.comm


def read_proc(pid: int) -> Proc | None:
    """The process ``pid`` from ``/proc/PID/stat``; None when it does not exist (any more)."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            raw = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    #  cutime cstime priority nice threads itrealvalue starttime ...": comm may hold spaces and ')'.
    left, paren, rest = raw.rpartition(")")
    if not paren:
        return None
    fields = rest.split()
    try:
        return Proc(pid=pid, comm=left.partition("(")[2], state=fields[0], ppid=int(fields[1]),
                    pgrp=int(fields[2]), start=int(fields[19]))
    except (IndexError, ValueError):
        return None


def processes() -> list[Proc]:
    """Every process visible in ``/proc``."""
    try:
        names = os.listdir(PROC)
    except OSError:
        return []
    found = []
    for entry in names:
        if entry.isdigit():
            p = read_proc(int(entry))
            if p is not None:
                found.append(p)
    return found


def send(p: Proc, sig: int) -> bool:
    """Signal ``p`` unless it is gone or its pid now belongs to another process; True when sent.

    With a pidfd (Linux 5.3+) the check and the signal cannot race with the pid's reuse.
    """
    fd = None
    try:
        fd = os.pidfd_open(p.pid)
    except (AttributeError, OSError):
        fd = None
    try:
        now = read_proc(p.pid)
        if now is None or now.start != p.start:
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)
        else:
            os.kill(p.pid, sig)
        return True
    except OSError:  # gone meanwhile (ESRCH), or not ours to signal (EPERM)
        return False
    finally:
        if fd is not None:
            os.close(fd)


def grace_seconds(env: Mapping[str, str] | None = None) -> float:
    """``AGENT_GRACE_SECONDS`` (set by the controller from ``spec.cleanup.gracePeriodSeconds``)."""
    return env_number(env if env is not None else os.environ, "AGENT_GRACE_SECONDS", DEFAULT_GRACE_SECONDS, 0, 86400)


def env_number(environ: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    """A number from the environment, ``default`` when it is unset, or invalid (one line says so)."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        say(f"ignoring invalid {name}={raw!r}; using {int(default) if float(default).is_integer() else default}")
        return default
    return value


def tree_budget(grace: float) -> float:
    """The part of the grace period the process tree gets (the rest is kept for kill and check)."""
    return max(0.0, grace - min(MAX_RESERVE_SECONDS, grace * 0.1))


def exit_code(wait_status: int) -> int:
    """A shell-style exit code: the child's code, or 128+N when it was killed by signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def _default_signals() -> list[int]:
    """Every catchable classic signal: reset to the default action in the child."""
    return sorted(
        int(s)
        for s in signal.valid_signals()
        if int(s) < signal.SIGRTMIN and s not in (signal.SIGKILL, signal.SIGSTOP)
    )


@dataclass
class Outcome:
    """What happened to the supervised process tree."""

    exit_code: int
    exited_on_own: bool
    """The child ended before any SIGTERM reached the supervisor."""
    terminated: bool
    """A SIGTERM reached the supervisor."""
    reaped: int = 0
    killed: int = 0
    survivors: list[str] = field(default_factory=list)
    stdout_bytes: int | None = None
    """Bytes the process tree wrote to stdout (None: not counted — a terminal)."""
    stderr_bytes: int | None = None

    def output(self) -> dict[str, int] | None:
        """``status.output`` as the Agent's status takes it."""
        if self.stdout_bytes is None or self.stderr_bytes is None:
            return None
        return {"bytes": self.stdout_bytes + self.stderr_bytes, "stdoutBytes": self.stdout_bytes,
                "stderrBytes": self.stderr_bytes}


class _Forward:
    """Copies one pipe to one of our descriptors, counting (and shipping, when a shipper is given);
    never blocks the agent on our output."""

    def __init__(self, source: int, target: int, shipper: ship.Shipper | None = None) -> None:
        self.source, self.target, self.count = source, target, 0
        self.shipper = shipper
        self.thread = threading.Thread(target=self._run, name=f"forward-{target}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        broken = False
        try:
            while True:
                try:
                    data = os.read(self.source, 65536)
                except InterruptedError:
                    continue
                if not data:
                    return
                self.count += len(data)
                if self.shipper is not None:
                    self.shipper.put(data)    # never blocks, never raises
                view = memoryview(data)
                while view and not broken:
                    try:
                        view = view[os.write(self.target, view):]
                    except InterruptedError:
                        continue
                    except OSError:
                        broken = True     # our own output is gone: keep draining the child's
        finally:
            os.close(self.source)

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)


class Supervisor:
    """Runs one command as a supervised child; see the module docstring."""

    def __init__(self, argv: Sequence[str], grace: float | None = None) -> None:
        if not argv:
            raise ValueError("no command to run")
        self.argv = list(argv)
        self.grace = grace_seconds() if grace is None else grace
        self.me = os.getpid()
        self.child_pid = 0
        self.child_status: int | None = None
        self._shipping: tuple[ship.Shipper, bool] | None = None    # (shipper, stream drained) to finish
        self.reaped = 0
        self.killed: set[int] = set()
        self._tty_handed = False
        self.terminated_at: float | None = None
        """When the first SIGTERM reached us (``time.monotonic``)."""

    # ------------------------------------------------------------------ processes

    def _reap(self) -> None:
        """Collect every exited child (ours or re-parented to us) without blocking."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self.reaped += 1
            if pid == self.child_pid:
                self.child_status = status

    def _tree(self) -> list[Proc]:
        """Live processes of the tree: our descendants plus anything left in the child's group."""
        every = processes()
        children: dict[int, list[Proc]] = {}
        for p in every:
            children.setdefault(p.ppid, []).append(p)
        found: dict[int, Proc] = {}
        todo = [self.me]
        while todo:
            for p in children.get(todo.pop(), []):
                if p.pid not in found and p.pid != self.me:
                    found[p.pid] = p
                    todo.append(p.pid)
        if self.child_pid and self._group_exists():
            for p in every:
                if p.pgrp == self.child_pid and p.pid != self.me:
                    found.setdefault(p.pid, p)
        # A zombie is already dead: we reap it, or its (live, listed) parent will be killed.
        return [p for p in found.values() if p.state not in ("Z", "X", "x")]

    def _group_exists(self) -> bool:
        try:
            os.killpg(self.child_pid, 0)
            return True
        except ProcessLookupError:
            return False
        except PermissionError:
            return True

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.child_pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _signal_tree(self, sig: int) -> None:
        """Signal the child's group and, once the child is gone, every other descendant too."""
        self._signal_group(sig)
        if self.child_status is None:
            return
        for p in self._tree():
            send(p, sig)

    def _kill_all(self) -> None:
        """SIGKILL the whole tree until it is gone (or :data:`KILL_WAIT_SECONDS` pass), reaping."""
        end = time.monotonic() + KILL_WAIT_SECONDS
        while True:
            self._reap()
            left = self._tree()
            if not left or time.monotonic() >= end:
                return
            self._signal_group(signal.SIGKILL)
            for p in left:
                if send(p, signal.SIGKILL):
                    self.killed.add(p.pid)
            signal.sigtimedwait({signal.SIGCHLD}, 0.05)

    # ------------------------------------------------------------------ terminal

    def _give_tty(self) -> None:
        """When we own the controlling terminal, make the child's group its foreground group."""
        try:
            if os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp():
                os.tcsetpgrp(0, self.child_pid)
                self._tty_handed = True
                # If the child touched the terminal before it was handed over, SIGTTIN/SIGTTOU
                # stopped it: let it continue (a no-op otherwise).
                self._signal_group(signal.SIGCONT)
        except OSError:
            pass

    def _take_tty(self) -> None:
        if self._tty_handed:
            self._tty_handed = False
            try:
                os.tcsetpgrp(0, os.getpgrp())
            except OSError:
                pass

    # ------------------------------------------------------------------ main loop

    def run(self, then: Callable[[Outcome], None] | None = None) -> Outcome:
        """Start the child, supervise it and its tree to the end; return the outcome.

        ``then(outcome)`` runs before the signal mask is restored, so a SIGTERM arriving
        meanwhile (e.g. while reporting) cannot kill us and change the exit code; signals still
        pending at the end are discarded.
        """
        set_child_subreaper()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # never inherit SIG_IGN: it would auto-reap
        for sig in (signal.SIGTTOU, signal.SIGTTIN):
            signal.signal(sig, signal.SIG_IGN)  # we may write to a tty we handed to the child
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        try:
            outcome = self._run()
            self._take_tty()
            if then is not None:
                then(outcome)
            self._finish_shipping()
            return outcome
        finally:
            self._take_tty()
            for _ in range(len(HANDLED)):
                if signal.sigtimedwait(HANDLED, 0) is None:
                    break
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def _run(self) -> Outcome:
        count = not (os.isatty(1) or os.isatty(2))
        pipes = [os.pipe(), os.pipe()] if count else []
        actions = [(os.POSIX_SPAWN_DUP2, w, fd) for fd, (_r, w) in zip((1, 2), pipes)]
        try:
            self.child_pid = os.posix_spawnp(
                self.argv[0],
                self.argv,
                os.environ,
                file_actions=actions,
                setpgroup=0,
                setsigmask=(),
                setsigdef=_default_signals(),
            )
        except OSError as exc:
            for r, w in pipes:
                os.close(r)
                os.close(w)
            code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
            say(f"cannot run {self.argv[0]!r}: {exc.strerror or exc}")
            return Outcome(exit_code=code, exited_on_own=True, terminated=False)
        shipper = _shipper() if pipes else None  # made here: its thread inherits the blocked signals
        forwards = []
        for (r, w), target in zip(pipes, (1, 2)):
            os.close(w)
            forwards.append(_Forward(r, target, shipper))
        self._give_tty()
        outcome = self._supervise()
        for forward in forwards:
            forward.join(KILL_WAIT_SECONDS)    # the tree is gone: its pipes are closed
        if forwards:
            outcome.stdout_bytes, outcome.stderr_bytes = forwards[0].count, forwards[1].count
        if shipper is not None:
            # A forwarder still running (a pipe held open by an unkillable process) means the
            # stream has not ended: ship what there is, but do not declare it complete.
            self._shipping = (shipper, not any(forward.thread.is_alive() for forward in forwards))
        return outcome

    def _finish_shipping(self) -> None:
        """Ship the rest and the end of the output — after the outcome was reported, so the
        controller knows the byte counts and waits for them (it stops the pod once all arrived).
        At most the shipper's bound; once a SIGTERM came, what is left of the grace period (at
        least 1 s)."""
        if self._shipping is None:
            return
        shipper, drained = self._shipping
        self._shipping = None
        shipper.close(self._flush_seconds(shipper), final=drained, sooner=self._grace_end)

    def _grace_end(self) -> float | None:
        """When shipping must end because of a SIGTERM (taken here: the process tree is gone, there
        is nothing to forward it to), or None."""
        while (info := signal.sigtimedwait(FORWARDED, 0)) is not None:
            if info.si_signo == signal.SIGTERM and self.terminated_at is None:
                self.terminated_at = time.monotonic()
        if self.terminated_at is None:
            return None
        return self.terminated_at + max(1.0, self.grace - MAX_RESERVE_SECONDS)

    def _flush_seconds(self, shipper: ship.Shipper) -> float:
        """How long the shipper may take to finish: its own bound, or after a SIGTERM what is left
        of the grace period (at least 1 s)."""
        if self.terminated_at is None:
            return shipper.flush_seconds
        left = self.terminated_at + self.grace - time.monotonic()
        return min(shipper.flush_seconds, max(1.0, left))

    def _supervise(self) -> Outcome:

        terminated = False
        exited_on_own = False
        strays_signalled = False
        deadline: float | None = None
        budget = tree_budget(self.grace)
        while True:
            self._reap()
            now = time.monotonic()
            if self.child_status is not None:
                if not terminated:
                    exited_on_own = True
                left = self._tree()
                if not left:
                    break
                if deadline is None:
                    deadline = now + budget  # strays after a normal exit get the grace period too
                if not strays_signalled:
                    self._signal_tree(signal.SIGTERM)
                    strays_signalled = True
            if deadline is not None and now >= deadline:
                break
            timeout = POLL_SECONDS if deadline is None else max(0.0, min(POLL_SECONDS, deadline - now))
            info = signal.sigtimedwait(HANDLED, timeout)
            if info is None or info.si_signo == signal.SIGCHLD:
                continue
            self._signal_tree(info.si_signo)
            if info.si_signo == signal.SIGTERM:
                terminated = True
                if self.terminated_at is None:
                    self.terminated_at = time.monotonic()
                end = time.monotonic() + budget
                deadline = end if deadline is None else min(deadline, end)

        had_strays = strays_signalled
        self._kill_all()
        self._reap()
        survivors = [f"{p.pid} ({p.name()}, {p.status})" for p in self._tree()]
        if self.child_status is None:
            code = 128 + signal.SIGKILL  # unkillable child: report as killed
        else:
            code = exit_code(self.child_status)
        outcome = Outcome(
            exit_code=code,
            exited_on_own=exited_on_own,
            terminated=terminated,
            reaped=self.reaped,
            killed=len(self.killed),
            survivors=survivors,
        )
        if terminated or had_strays or survivors or self.killed:
            say(verification_line(outcome))
        return outcome


def _shipper() -> ship.Shipper | None:
    """The shipper the environment asks for (imported only then: ``ssl`` and ``http.client`` are
    not needed otherwise)."""
    if not os.environ.get("AGENT_CONTROLLER_SHIP_URL", "").strip():
        return None
    from controller.agentctl import ship

    return ship.Shipper.from_env(os.environ)


def verification_line(o: Outcome) -> str:
    """The one-line result of the final check (``/proc``)."""
    if o.survivors:
        return (
            f"process tree NOT clean: {len(o.survivors)} descendants left: "
            + ", ".join(o.survivors)
            + f" ({o.reaped} reaped, {o.killed} killed)"
        )
    return f"process tree clean: 0 descendants left ({o.reaped} reaped, {o.killed} killed)"


def report_exit(code: int, retry_seconds: float = REPORT_SECONDS, output: dict[str, int] | None = None) -> None:
    """Report ``Completed``/``Failed`` for the child's exit code (with ``status.output``); failures
    only print one line."""
    name = os.environ.get("AGENT_NAME", "").strip()
    if not name:
        return
    phase = "Completed" if code == 0 else "Failed"
    if code > 128 and code - 128 < signal.NSIG:
        try:
            signame = signal.Signals(code - 128).name
        except ValueError:
            signame = f"signal {code - 128}"
        message = f"agent process was killed by {signame} (exit code {code})"
    else:
        message = f"agent process exited with code {code}"
    try:
        from controller.agentctl import status

        result = status.report(phase, message=message, reason="ExitCode", retry_seconds=retry_seconds,
                               output=output)
    except Exception as exc:  # noqa: BLE001 - the exit code must never depend on the API
        say(f"could not report {phase} (exit code {code}): {' '.join(str(exc).split())}")
        return
    if not result.written:
        say(f"agent already reported {result.phase}; not reporting {phase} (exit code {code})")


def run(argv: Sequence[str]) -> int:
    """``agentctl run -- CMD ARGS...``: supervise, report the outcome, return the exit code."""

    def report(outcome: Outcome) -> None:
        if outcome.exited_on_own:
            report_exit(outcome.exit_code, output=outcome.output())

    return Supervisor(argv).run(then=report).exit_code
