"""Waiting on conditions with deadlines (tests never sleep a fixed time and hope)."""

import asyncio
import time


class Timeout(AssertionError):
    pass


def wait_until(predicate, timeout=10.0, what="the condition", poll=0.02):
    """Return predicate()'s first true value; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


async def until(predicate, timeout=10.0, what="the condition", poll=0.02):
    """wait_until() for asyncio code."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise Timeout(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(poll)
