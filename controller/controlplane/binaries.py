"""Where the control plane's binaries come from: ``scripts/install-control-plane.sh``.

The script (see its header and docs/controlplane.md) builds etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kubectl from Go modules into
``PREFIX/controlplane/<key>/bin``, the key naming the pinned versions and a hash of the sources, and
prints that directory. Running it again costs a fraction of a second when the binaries exist (and
then needs no Go), so :func:`ensure_binaries` simply runs it every time and reads its answer.

``AGENT_CONTROLLER_CONTROLPLANE_BIN`` names a directory of ready binaries and skips the script;
``AGENT_CONTROLLER_TOOLS`` overrides the default prefix (the repository's ``.tools``, as for
scripts/install-test-tools.sh); ``AGENT_CONTROLLER_GO_CACHE`` is passed on to the script (a shared
Go cache, for a warm build in a second clone).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "install-control-plane.sh"
NO_GO_STATUS = 3


class BinariesUnavailable(RuntimeError):
    """The binaries are not built and cannot be built here (no Go, or no build script). The
    message is one line, for the user (and for a test's skip reason)."""


class BuildFailed(RuntimeError):
    """The build script ran and failed; the message holds the end of its output."""


def default_prefix() -> Path:
    return Path(os.environ.get("AGENT_CONTROLLER_TOOLS") or ROOT / ".tools")


def _complete(bin_dir: Path) -> bool:
    return all(os.access(bin_dir / name, os.X_OK) for name in BINARIES)


def ensure_binaries(prefix: str | os.PathLike[str] | None = None, *, build: bool = True,
                    echo: bool = True) -> Path:
    """The directory holding the five binaries, building them first if needed (``build=False``:
    only find them). A build's progress goes to stderr when ``echo`` (a reuse prints nothing). Raises
    BinariesUnavailable (no Go, no script, or not built and ``build=False``) or BuildFailed."""
    explicit = os.environ.get("AGENT_CONTROLLER_CONTROLPLANE_BIN")
    if explicit:
        bin_dir = Path(explicit)
        if not _complete(bin_dir):
            raise BinariesUnavailable(f"AGENT_CONTROLLER_CONTROLPLANE_BIN={explicit} lacks one of {', '.join(BINARIES)}")
        return bin_dir
    if not SCRIPT.exists():
        raise BinariesUnavailable(f"{SCRIPT} not found (not a source checkout): build the binaries there and set "
                                  "AGENT_CONTROLLER_CONTROLPLANE_BIN")
    env = dict(os.environ)
    if not build:
        # The script builds only when `go` is found: hide it, so it answers "not built" instead.
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                      if not os.access(os.path.join(p, "go"), os.X_OK))
    proc = subprocess.Popen(["bash", str(SCRIPT), str(prefix or default_prefix())], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    assert proc.stderr is not None and proc.stdout is not None
    errors: list[str] = []
    building = False
    try:
        for line in proc.stderr:                   # a build's progress, as it happens
            errors.append(line.rstrip("\n"))
            building = building or ": building " in line
            if echo and building:
                sys.stderr.write(line)
                sys.stderr.flush()
        out = proc.stdout.read().strip().splitlines()
        status = proc.wait()
    except BaseException:
        # Interrupted (a signal, Ctrl-C): stop the script and the `go build` it runs — its own
        # process group, started above — rather than leave a build running.
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        proc.wait()
        raise
    if status == NO_GO_STATUS:
        raise BinariesUnavailable(errors[-1] if errors else "go is not on PATH")
    if status != 0 or not out:
        raise BuildFailed(f"{SCRIPT} exited {status}:\n" + "\n".join(errors[-40:]))
    bin_dir = Path(out[-1])
    if not _complete(bin_dir):
        raise BuildFailed(f"{SCRIPT} answered {bin_dir}, which lacks one of {', '.join(BINARIES)}")
    return bin_dir
