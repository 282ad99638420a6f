"""The numbers agree: agent_controller_archived_bytes_total counts every archive the controller
writes — an Agent's and an orphan pod's (archived by the sweep) — once, and equals the bytes on
the archive volume."""

from __future__ import annotations

from pathlib import Path

from helpers import script, wait_for
from test_sweep import orphan, sample, scrape
from test_lifecycle import cleaned


def on_volume(archive_dir: Path) -> int:
    return sum(p.stat().st_size for m in archive_dir.glob("*/*/*/MANIFEST.json") for p in m.parent.iterdir()
               if p.is_file())


def test_archived_bytes_include_orphan_archives_once(api, ns, controller, archive_dir):
    api.create_agent(ns, "a1", {"image": "agent:1", "env": script([{"log": "agent output\n"}, {"exit": 0}])})
    wait_for(cleaned(api, ns, "a1"))
    agent_bytes = sample(scrape(controller), "agent_controller_archived_bytes_total")
    assert agent_bytes == on_volume(archive_dir) > 0
    pod = orphan(api, ns, "stray", logs=b"orphan output\n")
    wait_for(lambda: (api.pod(ns, "stray") or {}).get("status", {}).get("phase") == "Running")
    report = controller.sweep()
    assert report is not None and report.reaped["pod"] == 1, report
    orphan_dir = archive_dir / ns / "_orphans" / pod["metadata"]["uid"]
    assert (orphan_dir / "agent.log").read_bytes() == b"orphan output\n"
    text = scrape(controller)
    assert sample(text, "agent_controller_archived_bytes_total") == on_volume(archive_dir) > agent_bytes
    # Another sweep finds nothing: nothing is counted twice.
    controller.sweep()
    assert sample(scrape(controller), "agent_controller_archived_bytes_total") == on_volume(archive_dir)
