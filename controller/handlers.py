"""kopf handlers: two-line shims. They notice and enqueue; `sync` (sync.py) decides and acts.

- every Agent watch event        -> observe its phase (metrics), enqueue its key with the body
- Agent deleted (the finalizer)  -> enqueue, and hold the Agent until its cleanup succeeded
- startup / cleanup              -> start / stop the controller's own parts (operator.py)

Pods are watched by the controller's own label-selected watch (podwatch.py), not by kopf.
"""

from __future__ import annotations

from typing import Any

import kopf

from . import GROUP, PLURAL, VERSION, notice
from .kopfconfig import configure
from .runtime import Runtime

registry = kopf.OperatorRegistry()
AGENT = (GROUP, VERSION, PLURAL)


def runtime(memo: Any) -> Runtime:
    rt: Runtime = memo.runtime
    return rt


@kopf.on.event(*AGENT, registry=registry)
async def agent_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    notice.agent_event(runtime(memo), event)


@kopf.on.delete(*AGENT, registry=registry)
async def agent_deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """The finalizer: the Agent object stays until its cleanup succeeded."""
    await notice.agent_deleted(runtime(memo), body)


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    configure(settings)
    if getattr(memo, "on_startup", None) is not None:
        await memo.on_startup(runtime(memo))


@kopf.on.cleanup(registry=registry)
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    if getattr(memo, "on_shutdown", None) is not None:
        await memo.on_shutdown(runtime(memo))
