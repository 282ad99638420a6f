"""``agentctl run``: the PID-1 supervisor, with real processes and real signals."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

import psutil
import pytest
from agentctl_helpers import DEADLINE, REPO, agentctl, clean_env, write_kubeconfig

PY = sys.executable


def _gone(pid: int, create_time: float) -> bool:
    """True when the process no longer exists (a zombie still exists: not reaped)."""
    try:
        p = psutil.Process(pid)
        return p.create_time() != create_time
    except psutil.NoSuchProcess:
        return True


def _pids_from(out: bytes, prefix: bytes) -> list[int]:
    for line in out.splitlines():
        if line.startswith(prefix):
            return [int(x) for x in line[len(prefix):].split()]
    raise AssertionError(f"no {prefix!r} line in {out!r}")


# ------------------------------------------------------------------ exit codes


@pytest.mark.parametrize("code", [0, 1, 3, 42, 255])
def test_exit_code_is_the_childs(code: int) -> None:
    r = agentctl("run", "--", "sh", "-c", f"exit {code}")
    assert r.returncode == code
    assert r.stderr == b""  # nothing to clean, nothing to report without AGENT_NAME


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_child_killed_by_signal_exits_128_plus_n(sig: int) -> None:
    r = agentctl("run", "--", PY, "-c", f"import os; os.kill(os.getpid(), {int(sig)})")
    assert r.returncode == 128 + sig


def test_command_not_found_exits_127_and_not_executable_126(tmp_path: Any) -> None:
    r = agentctl("run", "--", "definitely-not-a-command-xyz")
    assert r.returncode == 127
    assert r.stderr.decode().count("\n") == 1 and b"Traceback" not in r.stderr
    f = tmp_path / "plain.txt"
    f.write_text("not a program")
    r = agentctl("run", "--", str(f))
    assert r.returncode == 126


def test_arguments_after_double_dash_reach_the_child_verbatim() -> None:
    r = agentctl("run", "--", PY, "-c", "import sys; print(sys.argv[1:])", "--phase", "-n", "x y", "--")
    assert r.returncode == 0
    assert r.stdout == b"['--phase', '-n', 'x y', '--']\n"


# ------------------------------------------------------------------ output


def test_binary_and_non_utf8_output_passes_through_byte_identical(script: Any) -> None:
    child = script(
        "import os\n"
        "out = bytes(range(256)) * 4096 + b'\\xff\\xfe\\x80 not utf-8 \\xc3\\x28\\r\\n\\x00\\x1b[31m'\n"
        "err = b'\\x00\\x01\\xfe\\xff' * 1000 + b'\\xed\\xa0\\x80 no newline at end'\n"
        "for i in range(0, len(out), 7001):\n"
        "    os.write(1, out[i:i + 7001])\n"
        "os.write(2, err)\n"
    )
    expected_out = bytes(range(256)) * 4096 + b"\xff\xfe\x80 not utf-8 \xc3\x28\r\n\x00\x1b[31m"
    expected_err = b"\x00\x01\xfe\xff" * 1000 + b"\xed\xa0\x80 no newline at end"
    r = agentctl("run", "--", PY, child)
    assert r.returncode == 0
    assert r.stdout == expected_out
    assert r.stderr == expected_err


def test_output_is_streamed_unbuffered(spawn: Any, script: Any) -> None:
    # The child writes a partial line and then blocks on stdin: the bytes must arrive at once.
    child = script("import os, sys\nos.write(1, b'partial, no newline')\nsys.stdin.read()\nos.write(1, b'!')\n")
    o = spawn("run", "--", PY, child, stdin=subprocess.PIPE)
    o.wait_for(b"partial, no newline")
    assert o.proc.stdin is not None
    o.proc.stdin.close()
    assert o.finish() == 0
    assert bytes(o.out) == b"partial, no newline!"


# ------------------------------------------------------------------ signals

GRANDCHILDREN_IGNORING_TERM = """
import signal, subprocess, sys, time
IGN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(600)"
kids = [
    subprocess.Popen([sys.executable, "-c", IGN], stdout=subprocess.PIPE),  # in the child's group
    subprocess.Popen([sys.executable, "-c", IGN], stdout=subprocess.PIPE),  # in the child's group
    subprocess.Popen([sys.executable, "-c", IGN], stdout=subprocess.PIPE, start_new_session=True),  # escaped
]
for k in kids:
    k.stdout.readline()  # SIGTERM is ignored from now on
print("pids", *[k.pid for k in kids], flush=True)
if len(sys.argv) > 1 and sys.argv[1] == "ignore-term-too":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print("child ignores SIGTERM", flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("child_too", [False, True], ids=["child-dies-on-term", "child-ignores-term"])
def test_sigterm_gives_grace_period_then_kills_the_whole_tree(spawn: Any, script: Any, child_too: bool) -> None:
    child = script(GRANDCHILDREN_IGNORING_TERM)
    args = [PY, child] + (["ignore-term-too"] if child_too else [])
    o = spawn("run", "--", *args, env=clean_env(AGENT_GRACE_SECONDS="1"))
    o.wait_for(b"child ignores SIGTERM\n" if child_too else b"pids ")
    pids = _pids_from(bytes(o.out), b"pids ")
    created = {pid: psutil.Process(pid).create_time() for pid in pids}
    t0 = time.monotonic()
    o.proc.send_signal(signal.SIGTERM)
    rc = o.finish()
    elapsed = time.monotonic() - t0
    assert rc == (128 + signal.SIGKILL if child_too else 128 + signal.SIGTERM)
    assert elapsed >= 0.5, "the tree must get the grace period before SIGKILL"
    for pid in pids:
        assert _gone(pid, created[pid]), f"descendant {pid} survived (or was not reaped)"
    err = bytes(o.err).decode()
    lines = [ln for ln in err.splitlines() if ln.startswith("agentctl:")]
    assert len(lines) == 1, err
    assert lines[0].startswith("agentctl: process tree clean: 0 descendants left"), err
    assert "killed)" in lines[0]


def test_sigterm_when_tree_honours_it_exits_without_waiting_for_grace(spawn: Any) -> None:
    o = spawn("run", "--", PY, "-c", "import time; print('up', flush=True); time.sleep(600)",
              env=clean_env(AGENT_GRACE_SECONDS="40"))
    o.wait_for(b"up\n")
    t0 = time.monotonic()
    o.proc.send_signal(signal.SIGTERM)
    assert o.finish() == 128 + signal.SIGTERM
    assert time.monotonic() - t0 < 30, "no survivor: must not wait for the grace period"
    assert b"agentctl: process tree clean: 0 descendants left" in bytes(o.err)


def test_sigint_and_sighup_are_forwarded_to_the_process_group(spawn: Any, script: Any) -> None:
    child = script(
        """
import os, signal, subprocess, sys, time
GC = '''
import os, signal, sys, time
def h(s, f):
    os.write(1, ("grandchild got " + signal.Signals(s).name + chr(10)).encode())  # one write
    sys.exit(0)
signal.signal(signal.SIGHUP, h)
print("grandchild ready", flush=True)
while True:
    time.sleep(1)
'''
got = []
def h(s, f):
    got.append(s)
    os.write(1, ("child got " + signal.Signals(s).name + chr(10)).encode())
for s in (signal.SIGHUP, signal.SIGINT):
    signal.signal(s, h)
gc = subprocess.Popen([sys.executable, "-c", GC])
print("child ready", flush=True)
while signal.SIGINT not in got:
    time.sleep(0.05)
gc.wait()
"""
    )
    o = spawn("run", "--", PY, child)
    o.wait_for(b"child ready\n")
    o.wait_for(b"grandchild ready\n")
    o.proc.send_signal(signal.SIGHUP)
    o.wait_for(b"child got SIGHUP\n")
    o.wait_for(b"grandchild got SIGHUP\n")
    o.proc.send_signal(signal.SIGINT)
    o.wait_for(b"child got SIGINT\n")
    assert o.finish() == 0


def test_strays_left_after_a_normal_exit_are_terminated(script: Any) -> None:
    # The child leaves a background process behind and exits 0.
    child = script(
        "import subprocess\n"
        "p = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"
        "print('stray', p.pid, flush=True)\n"
    )
    r = agentctl("run", "--", PY, child, env=clean_env(AGENT_GRACE_SECONDS="2"))
    assert r.returncode == 0
    (pid,) = _pids_from(r.stdout, b"stray ")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).name() != "sleep"
    assert b"agentctl: process tree clean: 0 descendants left" in r.stderr


# ------------------------------------------------------------------ zombies

def _orphan_child(script: Any) -> str:
    return script(
        """
import os, subprocess, sys, time

N = 3
supervisor = os.getppid()
rfd, wfd = os.pipe()
info_r, info_w = os.pipe()
mid = os.fork()
if mid == 0:
    # The middle process starts N orphans-to-be that exit once the pipe closes, then exits.
    kids = [subprocess.Popen(["cat"], stdin=rfd, stdout=subprocess.DEVNULL) for _ in range(N)]
    os.write(info_w, " ".join(str(k.pid) for k in kids).encode())
    os._exit(0)
os.close(rfd)
os.close(info_w)
os.waitpid(mid, 0)
orphans = [int(x) for x in os.read(info_r, 1000).split()]

def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])

print("supervisor pid", supervisor, flush=True)
print("orphans", *orphans, flush=True)
print("orphan parents", *[stat(p)[1] for p in orphans], flush=True)
os.close(wfd)  # the orphans exit now: they are zombies until their new parent reaps them
end = time.monotonic() + 30
while time.monotonic() < end and any(stat(p) is not None for p in orphans):
    time.sleep(0.05)
print("orphans left", *[f"{p}:{stat(p)[0]}" for p in orphans if stat(p) is not None], flush=True)
zombies = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        s = stat(int(entry))
        if s is not None and s[0] == "Z" and s[1] == supervisor:
            zombies.append(entry)
print("zombies of supervisor", *zombies, flush=True)
"""
    )


def _check_orphans_reaped(out: bytes, expected_parent: int | None = None) -> None:
    lines = {ln.split(b" ")[0] + b" " + ln.split(b" ")[1]: ln for ln in out.splitlines() if b" " in ln}
    supervisor = _pids_from(out, b"supervisor pid ")[0]
    parents = _pids_from(out, b"orphan parents ")
    assert len(parents) == 3
    assert parents == [expected_parent or supervisor] * 3, f"orphans not re-parented to agentctl: {out!r}"
    assert lines[b"orphans left"].strip() == b"orphans left", f"orphans not reaped: {out!r}"
    assert lines[b"zombies of"].strip() == b"zombies of supervisor", out


def test_orphans_are_reparented_and_reaped_via_subreaper(script: Any) -> None:
    r = agentctl("run", "--", PY, _orphan_child(script))
    assert r.returncode == 0, r.stderr
    _check_orphans_reaped(r.stdout)


def _pid_namespaces_work() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    try:
        r = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", "test $$ -eq 1"],
            capture_output=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


needs_pidns = pytest.mark.skipif(
    not _pid_namespaces_work(), reason="needs root and `unshare --pid --fork --mount-proc` (PID namespaces)"
)
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


@needs_pidns
def test_as_pid1_orphans_are_reaped(script: Any) -> None:
    child = _orphan_child(script)
    r = subprocess.run(
        [*UNSHARE, PY, "-m", "controller.agentctl.cli", "run", "--", PY, child],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    assert _pids_from(r.stdout, b"supervisor pid ") == [1]
    _check_orphans_reaped(r.stdout, expected_parent=1)


@needs_pidns
def test_as_pid1_sigterm_kills_the_tree_after_grace(script: Any) -> None:
    child = script(GRANDCHILDREN_IGNORING_TERM)
    proc = subprocess.Popen(
        [*UNSHARE, PY, "-m", "controller.agentctl.cli", "run", "--", PY, child],
        env=clean_env(AGENT_GRACE_SECONDS="1"),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "pids ..." (namespace pids)
        assert line.startswith(b"pids "), line
        # The PID-1 agentctl, seen from here, is the child of `unshare`.
        pid1 = None
        end = time.monotonic() + DEADLINE
        while pid1 is None and time.monotonic() < end:
            kids = psutil.Process(proc.pid).children()
            pid1 = kids[0] if kids else None
        assert pid1 is not None
        host_tree = [p for p in pid1.children(recursive=True)]
        assert len(host_tree) >= 4  # child + 3 grandchildren
        pid1.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM
    assert b"agentctl: process tree clean: 0 descendants left" in err, err
    for p in host_tree:
        assert not p.is_running(), f"{p.pid} survived"


# ------------------------------------------------------------------ without Kubernetes


def test_without_agent_name_it_only_supervises(tmp_path: Any) -> None:
    # No AGENT_NAME, no in-cluster env, no kubeconfig: nothing is reported, nothing complains.
    r = agentctl("run", "--", "sh", "-c", "echo working; exit 3")
    assert r.returncode == 3
    assert r.stdout == b"working\n"
    assert r.stderr == b""


def test_report_failure_never_changes_the_exit_code(tmp_path: Any) -> None:
    # AGENT_NAME is set but the API is unreachable: the exit code is still the child's.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connections are refused
    kc = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", "t", "ns")
    env = clean_env(AGENT_NAME="a1", AGENT_NAMESPACE="ns", KUBECONFIG=str(kc))
    t0 = time.monotonic()
    r = agentctl("run", "--", "sh", "-c", "exit 3", env=env)
    assert r.returncode == 3
    assert time.monotonic() - t0 < 45
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("agentctl: could not report Failed (exit code 3)"), lines


@pytest.mark.skipif(shutil.which("script") is None, reason="needs util-linux `script` to get a pseudo-terminal")
def test_interactive_child_can_read_the_terminal() -> None:
    # Under a pty the child's process group must become the terminal's foreground group,
    # otherwise its read from the terminal stops it with SIGTTIN.
    inner = f"{PY} -m controller.agentctl.cli run -- sh -c 'read x; echo got:$x; exit 7'"
    r = subprocess.run(
        ["script", "-qec", inner, "/dev/null"],
        input=b"hello\n",
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        timeout=DEADLINE,
        check=False,
    )
    assert b"got:hello" in r.stdout, r
    assert r.returncode == 7
