"""The chaos run (bench/chaos.py), small and seeded: every fault at once, then the promise checked
— nothing leaked, every Agent cleaned up once, every archived byte what the container wrote (or
marked lost where the SPEC allows it). No timed assertion: the run's waits are failsafes.

And the harness itself: the outputs a broken controller would leave (one delete skipped, one
archived byte flipped, a broken stream sealed as complete, a loss given a reason the SPEC does
not allow there, half of an `agentctl run` agent's output lost) must fail the check; a whole log marked incomplete passes (counted apart)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from bench import chaos

AGENTS = 40
SEED = 11


def _run(world: Any, plan: chaos.Plan, workdir: Path, **kw: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        try:
            return await chaos.run(world, plan, workdir, quiesce_timeout=600, **kw)
        finally:
            await world.client.close()
    return asyncio.run(go())


def test_a_seeded_chaos_run_leaks_nothing_and_loses_no_byte(backend_name: str, tmp_path: Path) -> None:
    if backend_name == "control-plane":
        from controller.controlplane import BinariesUnavailable, ensure_binaries
        try:
            ensure_binaries()
        except BinariesUnavailable as exc:
            pytest.skip(f"no control plane: {exc}")
    world = chaos.make_world(backend_name, tmp_path, AGENTS)
    try:
        report = _run(world, chaos.make_plan(SEED, AGENTS, kills=6, active=45.0), tmp_path)
    finally:
        world.stop()
    print(json.dumps(report["figures"], indent=1), json.dumps(report["counts"], indent=1))
    assert report["violations"] == [], "\n".join(report["violations"])
    figures, counts = report["figures"], report["counts"]
    assert figures["kills"] >= 5 and figures["faults"]["api_server_restart"] == 1
    assert figures["faults"]["node_lost"] == 1 and figures["faults"].get("leader_paused") == 1
    assert counts["managed_objects_left"] == 0
    assert counts["archives"] + counts.get("deleted_before_its_pod_ran", 0) == AGENTS


def _manifest(directory: Path) -> dict[str, Any]:
    return json.loads((directory / "MANIFEST.json").read_text())


def _reseal(directory: Path, data: bytes, missing: str | None = None) -> None:
    """agent.log replaced by ``data`` with a MANIFEST that agrees (as a broken controller writes it),
    complete or marked ``missing``."""
    (directory / "agent.log").write_bytes(data)
    manifest = _manifest(directory)
    for e in manifest["files"]:
        if e["name"] == "agent.log":
            e.update(size=len(data), sha256=hashlib.sha256(data).hexdigest(), complete=missing is None)
            e.pop("missing", None)
            if missing is not None:
                e["missing"] = missing
    (directory / "MANIFEST.json").write_text(json.dumps(manifest))


def test_the_harness_fails_a_broken_controller(tmp_path: Path) -> None:
    world = chaos.make_world("emulator", tmp_path, 10)
    plan = chaos.make_plan(SEED, 10, kills=0, active=20.0, faults=False)

    async def go() -> list[str]:
        try:
            report = await chaos.run(world, plan, tmp_path, quiesce_timeout=300, fault_rate=0)
            assert report["violations"] == [], report["violations"]
            unconfirmed = report["counts"].get("logs_whole_but_not_confirmed", 0)
            ns, metrics = report["namespace"], report["metrics"]
            found = []
            root = world.archive / ns
            victim = next(p for p in plan.agents if p.ending == "exit0")
            directory = next((root / victim.name).iterdir())
            original = (directory / "agent.log").read_bytes(), (directory / "MANIFEST.json").read_bytes()
            assert len(original[0]) > 10

            # one archived byte flipped (its MANIFEST agreeing)
            flipped = bytearray(original[0])
            flipped[5] ^= 0x01
            _reseal(directory, bytes(flipped))
            found.append(await chaos.check(world, world.client, ns, plan, metrics))
            # a broken stream sealed as complete: the end of the log missing, claimed complete
            _reseal(directory, original[0][: len(original[0]) // 2])
            found.append(await chaos.check(world, world.client, ns, plan, metrics))
            # the same loss marked as a lost node, on an agent whose node stayed
            _reseal(directory, original[0][: len(original[0]) // 2], missing="kubelet_unreachable")
            found.append(await chaos.check(world, world.client, ns, plan, metrics))
            # every byte there but marked incomplete (an end that could not be confirmed): no loss
            _reseal(directory, original[0], missing="kubelet_unreachable")
            whole = await chaos.check(world, world.client, ns, plan, metrics)
            assert whole["violations"] == [] and whole["counts"]["logs_whole_but_not_confirmed"] == unconfirmed + 1
            (directory / "agent.log").write_bytes(original[0])
            (directory / "MANIFEST.json").write_bytes(original[1])
            assert (await chaos.check(world, world.client, ns, plan, metrics))["violations"] == []
            # under agentctl run, a loss the SPEC allows elsewhere (rotated) is still a loss
            wrapped = next(p for p in plan.agents if p.ending == "wrapped")
            wrapped_dir = next((root / wrapped.name).iterdir())
            whole = (wrapped_dir / "agent.log").read_bytes()
            assert whole == chaos.wrapped_output(wrapped)
            wrapped_manifest = (wrapped_dir / "MANIFEST.json").read_bytes()
            _reseal(wrapped_dir, whole[len(whole) // 2:], missing="rotated")
            found.append(await chaos.check(world, world.client, ns, plan, metrics))
            (wrapped_dir / "agent.log").write_bytes(whole)
            (wrapped_dir / "MANIFEST.json").write_bytes(wrapped_manifest)
            # one delete skipped: a credential of the agent left behind
            uid = directory.name
            await world.client.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts", {
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": f"{victim.name}-agent", "labels": {
                    "app.kubernetes.io/managed-by": "agent-controller", "agentcontroller.dev/agent-uid": uid}}})
            found.append(await chaos.check(world, world.client, ns, plan, metrics))
            # a cleanup done twice (by a restarted controller that did not see the first): two Events
            await world.client.call("POST", f"/api/v1/namespaces/{ns}/events", {
                "apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{victim.name}.twice"},
                "involvedObject": {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                                   "name": victim.name, "namespace": ns, "uid": uid},
                "type": "Normal", "reason": "CleanedUp", "message": "again", "count": 1})
            found.append(await chaos.check(world, world.client, ns, plan, metrics))
            return ["\n".join(r["violations"]) for r in found]
        finally:
            await world.client.close()

    try:
        flipped, sealed, mislabelled, rotated, leaked, twice = asyncio.run(go())
    finally:
        world.stop()
    assert "sealed complete but differs" in flipped
    assert "sealed complete but differs" in sealed
    assert "log incomplete (kubelet_unreachable): not a loss the SPEC allows" in mislabelled
    assert "under agentctl run, agent.log is not what the process wrote" in rotated
    assert "managed objects left: {'serviceaccount'" in leaked
    assert "cleaned up 2 times (CleanedUp Events)" in twice
