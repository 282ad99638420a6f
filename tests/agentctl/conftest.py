"""Fixtures for the agentctl tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentctl_helpers import Output, popen_agentctl


@pytest.fixture
def script(tmp_path: Path) -> Iterator[Any]:
    """``script(code) -> path``: write a Python child program to a file."""
    count = 0

    def write(code: str) -> str:
        nonlocal count
        count += 1
        path = tmp_path / f"child{count}.py"
        path.write_text(code)
        return str(path)

    yield write


@pytest.fixture
def spawn() -> Iterator[Any]:
    """``spawn(*agentctl_args, env=...) -> Output``; kills leftovers at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None, **kw: Any) -> Output:
        proc = popen_agentctl(*args, env=env, **kw)
        procs.append(proc)
        return Output(proc)

    yield start
    import psutil

    for proc in procs:
        if proc.poll() is None:
            try:
                tree = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                tree = []
            proc.kill()
            proc.wait()
            for p in tree:
                try:
                    p.kill()
                except psutil.Error:
                    pass
