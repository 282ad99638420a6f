"""A small helper for asyncio unit tests (pytest-asyncio is not used): `@async_test` runs an
`async def` test in a fresh event loop, under a failsafe timeout (a hang fails, it never blocks)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Callable
from typing import Any

FAILSAFE_SECONDS = 20.0


def async_test(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        async def guarded() -> Any:
            # Not asyncio.wait_for: a test that catches CancelledError would swallow its timeout.
            task = asyncio.ensure_future(fn(*args, **kwargs))
            done, _ = await asyncio.wait({task}, timeout=FAILSAFE_SECONDS)
            if not done:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise AssertionError(f"the test did not finish within its failsafe of {FAILSAFE_SECONDS}s")
            return task.result()
        return asyncio.run(guarded())
    return run


async def until(predicate: Callable[[], bool], step: float = 0.001) -> None:
    """Wait until `predicate()` holds (the test's failsafe timeout bounds it)."""
    while not predicate():
        await asyncio.sleep(step)
