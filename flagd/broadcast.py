"""Wakes every open stream when a new snapshot is published, without ever waiting on one.

Each subscriber owns an ``asyncio.Event``. Publishing sets them all and returns at once; a
stream that is slow to write (HTTP/2 flow control, a stuck client) only delays itself, and
when it wakes it reads the *latest* snapshot, so missed intermediate versions cost nothing:
SyncFlags always sends full snapshots and EventStream diffs against what it last reported.
"""

from __future__ import annotations

import asyncio


class Broadcast:
    """A set of wake-up flags, one per open stream."""

    def __init__(self) -> None:
        self._subscribers: set[asyncio.Event] = set()
        self.closing = False

    def subscribe(self) -> asyncio.Event:
        """Register a stream; returns the event that will be set on every publish."""
        event = asyncio.Event()
        if self.closing:
            event.set()
        self._subscribers.add(event)
        return event

    def unsubscribe(self, event: asyncio.Event) -> None:
        """Forget a stream (idempotent)."""
        self._subscribers.discard(event)

    def publish(self) -> None:
        """Wake every subscriber. O(n) flag sets, never blocks."""
        for event in self._subscribers:
            event.set()

    def close(self) -> None:
        """Wake everyone for the last time: streams see ``closing`` and end."""
        self.closing = True
        self.publish()

    def __len__(self) -> int:
        return len(self._subscribers)
