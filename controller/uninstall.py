"""The way out when the controller is gone: release Agents held by its finalizer.

Every Agent carries the finalizer ``agentcontroller.dev/cleanup``; the controller removes it once
the Agent's cleanup succeeded. Uninstall the controller before the Agents and a deleted Agent
waits for it forever - and so does the deletion of its namespace and of the CRD. The safe order
is: delete the Agents while the controller runs (each is archived and torn down), then uninstall.
When that is too late, :func:`release_finalizers` removes our finalizer (and only ours: a JSON
patch that first tests the entry it removes, so a concurrent change is never overwritten) from
every Agent, or from those being deleted. Their children then go with the Kubernetes garbage
collector (ownerReferences), but nothing is archived: their logs are lost.

:func:`uninstall_command` is ``agent-controller uninstall [--release-finalizers] [--all]
[--dry-run] [--namespace NS ...]`` (to be wired in cli.py): without ``--release-finalizers`` it
lists the Agents still held (exit 1 if any); :func:`report` prints what was done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

from . import FINALIZER
from .kube.client import AGENTS, ApiError, ClientConfig, KubeClient

__all__ = ["Released", "agents_holding", "release_finalizers", "report", "uninstall_command"]


@dataclass
class Released:
    """What :func:`release_finalizers` did."""

    released: list[str] = field(default_factory=list)  # "namespace/name"
    skipped: list[str] = field(default_factory=list)  # held but not being deleted (without all=True)
    failed: dict[str, str] = field(default_factory=dict)  # "namespace/name" -> error
    dry_run: bool = False


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{meta.get('namespace', '')}/{meta['name']}"


async def agents_holding(client: KubeClient, namespaces: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Agents that carry our finalizer (in ``namespaces``, or in all namespaces)."""
    found: list[dict[str, Any]] = []
    for ns in list(namespaces or [None]):  # type: ignore[list-item]
        listing = await client.list(AGENTS, ns)
        for item in listing.get("items") or []:
            if FINALIZER in (item.get("metadata", {}).get("finalizers") or []):
                found.append(item)
    return found


async def release_finalizers(
    client: KubeClient,
    namespaces: Iterable[str] | None = None,
    *,
    all_agents: bool = False,
    dry_run: bool = False,
    attempts: int = 3,
) -> Released:
    """Remove our finalizer from Agents being deleted (``all_agents``: from every Agent).

    Each removal is a JSON patch ``test`` + ``remove`` of exactly our entry; when the list
    changed meanwhile (422), the Agent is read again and the patch retried (``attempts``).
    """
    result = Released(dry_run=dry_run)
    for agent in await agents_holding(client, namespaces):
        key = _key(agent)
        if not all_agents and not agent["metadata"].get("deletionTimestamp"):
            result.skipped.append(key)
            continue
        if dry_run:
            result.released.append(key)
            continue
        error = await _remove(client, agent, attempts)
        if error is None:
            result.released.append(key)
        else:
            result.failed[key] = error
    return result


async def _remove(client: KubeClient, agent: dict[str, Any], attempts: int) -> str | None:
    meta = agent["metadata"]
    ns, name = meta.get("namespace"), meta["name"]
    for _ in range(max(1, attempts)):
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return None
        i = finalizers.index(FINALIZER)
        patch = [
            {"op": "test", "path": "/metadata/uid", "value": meta["uid"]},
            {"op": "test", "path": f"/metadata/finalizers/{i}", "value": FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{i}"},
        ]
        try:
            await client.patch(AGENTS, ns, name, patch, patch_type="json")
            return None
        except ApiError as exc:
            if exc.not_found:
                return None  # gone already
            if exc.status != 422:
                return f"{exc.status} {exc.message}"
        try:
            meta = (await client.get(AGENTS, ns, name))["metadata"]
        except ApiError as exc:
            if exc.not_found:
                return None
            return f"{exc.status} {exc.message}"
        if meta.get("uid") != agent["metadata"]["uid"]:
            return None  # re-created under the same name: not ours to touch
    return "the Agent kept changing; try again"


def report(result: Released, out: TextIO) -> int:
    """Print what was done; the exit status (1 if any Agent could not be released)."""
    verb = "would release" if result.dry_run else "released"
    for key in result.released:
        print(f"{verb} {key}", file=out)
    for key in result.skipped:
        print(f"kept {key} (not being deleted; --all releases it too)", file=out)
    for key, error in result.failed.items():
        print(f"FAILED {key}: {error}", file=out)
    print(f"{len(result.released)} {verb}, {len(result.skipped)} kept, {len(result.failed)} failed. "
          "Their pods, prompts and credentials go with the garbage collector; their logs were not archived.",
          file=out)
    return 1 if result.failed else 0


async def uninstall_command(
    config: ClientConfig,
    namespaces: Iterable[str] | None = None,
    *,
    release: bool,
    all_agents: bool = False,
    dry_run: bool = False,
    out: TextIO,
) -> int:
    """``agent-controller uninstall``: without ``release``, list the Agents still held by the
    finalizer (exit 1 if any, so scripts can refuse to uninstall); with it, release them."""
    client = KubeClient(config)
    try:
        if not release:
            held = await agents_holding(client, namespaces)
            for agent in held:
                deleting = " (being deleted)" if agent["metadata"].get("deletionTimestamp") else ""
                print(f"{_key(agent)}{deleting}", file=out)
            print(f"{len(held)} Agent(s) hold the finalizer {FINALIZER}. Delete them while the controller "
                  "runs (kubectl delete agents --all -A), or release them with --release-finalizers "
                  "(their logs are then not archived).", file=out)
            return 1 if held else 0
        result = await release_finalizers(client, namespaces, all_agents=all_agents, dry_run=dry_run)
        return report(result, out)
    finally:
        await client.close()
