"""Polling helpers for tests (poll with a timeout instead of sleeping blindly)."""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Callable


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {value!r})")
        time.sleep(interval)


async def async_wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.02, what: str = "condition"
):
    """Like :func:`wait_until`, but yields to the event loop between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {value!r})")
        await asyncio.sleep(interval)
