"""`python -m bench --quick`: the benchmark runs end to end against the emulator and writes its
JSON (with the keys issue #6 asks for), Markdown and plot — a few agents, well under a minute."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

KEYS = ["backend", "burst.agents", "burst.seconds", "burst.cleanups_per_second", "burst.teardown_p99_ms",
        "idle.teardown_p50_ms", "idle.teardown_p99_ms", "api.requests_per_cleanup", "scale.rss_mb_1k",
        "scale.rss_mb_10k", "scale.sweep_seconds_10k", "machine.cpus", "machine.python"]


def get(result: dict, path: str):
    node = result
    for part in path.split("."):
        assert isinstance(node, dict) and part in node, f"{path} missing from the bench result"
        node = node[part]
    return node


@pytest.mark.slow
def test_quick_bench_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--output", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for key in KEYS:
        assert get(result, key) is not None, key
    assert result["backend"] == "emulator"
    assert result["burst"]["all_verified"] is True
    assert result["burst"]["verified"] == result["burst"]["agents"] == 10
    assert result["api"]["requests_per_cleanup"] > 0
    assert result["scale"]["sweep_requests_10k"] == 6          # one list per kind, and of the Agents
    samples = result["samples"]
    assert len(samples["idle"]["terminal_to_pod_delete_s"]) == result["idle"]["agents"]
    markdown = out.with_suffix(".md").read_text()
    assert "backend: emulator" in markdown and "| figure | value | target | met |" in markdown
    png = out.with_suffix(".png")
    if _has_matplotlib():                   # the plot needs the `bench` extra, not a test extra
        assert png.stat().st_size > 10_000 and result["outputs"]["plot"] == str(png)
    else:
        assert not png.exists() and "plot" not in result["outputs"]


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
