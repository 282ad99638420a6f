"""The phase gauge's source (Runtime.phases): the sweep's list of the Agents fills in an Agent the
watch never showed this process, and never brings back one seen deleted since."""

from __future__ import annotations

from pathlib import Path

from controller.archive import Archive
from controller.metrics import Metrics
from controller.runtime import Runtime


def agent(uid: str, phase: str | None) -> dict:
    return {"metadata": {"name": f"a-{uid}", "uid": uid}, "status": {"phase": phase} if phase else {}}


def samples(rt: Runtime, family: str) -> dict[str, float]:
    return {str(s.labels.get("phase") or s.labels.get("to")): s.value for m in rt.metrics.registry.collect()
            if m.name == family for s in m.samples if s.value and not s.name.endswith("_created")}


def test_the_sweep_list_fills_in_what_the_watch_missed_and_not_what_it_saw_deleted(tmp_path: Path) -> None:
    rt = Runtime(client=None, archive=Archive(tmp_path), metrics=Metrics())  # type: ignore[arg-type]
    rt.observe_phase("seen", "Running")
    rt.forget_agent("deleted")                       # its DELETED event came after the list was made
    rt.phases_listed([agent("seen", "Completed"), agent("missed", "Failed"), agent("deleted", "Completed"),
                      agent("new", None)])
    assert rt.phases == {"seen": "Running", "missed": "Failed", "new": ""}   # the watch's word stays
    assert samples(rt, "agent_controller_agents") == {"Running": 1, "Failed": 1, "Pending": 1}
    assert samples(rt, "agent_controller_phase_transitions") == {}     # filling in is no transition
