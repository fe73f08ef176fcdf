"""Change notification: tell subscribers soon after any process commits a new version.

One daemon thread per store. PostgreSQL: a dedicated autocommit connection LISTENs on the
store's channel (every commit NOTIFYs it with the new version), reconnecting with backoff, and
the head is polled every second as a safety net for notifications lost while reconnecting.
SQLite has no notifications: the head is polled every 50 ms, and a commit made through this
store wakes the thread at once (`poke`), so a single daemon does not wait for the poll.

Callbacks receive versions in increasing order, each at most once; bursts may be coalesced
(callback(7) can stand for 5, 6 and 7), so a callback should re-read state, not count calls.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import threading
import time
from collections.abc import Callable

import psycopg
from psycopg import sql

log = logging.getLogger("flagd.state")

SQLITE_POLL_S = 0.05
PG_POLL_S = 1.0
RECONNECT_MAX_S = 2.0


class Notifier:
    """Delivers new head versions to callbacks on one daemon thread."""

    def __init__(
        self,
        read_head: Callable[[], int],
        *,
        poll_interval: float,
        libpq_url: str | None = None,
        channel: str = "",
        application_name: str = "ripcord-listen",
    ) -> None:
        self._read_head = read_head
        self._poll_interval = poll_interval
        self._libpq_url = libpq_url
        self._channel = channel
        self._application_name = application_name[:63]
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[int], None]] = {}
        self._ids = itertools.count()
        self._last = 0
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closed = False
        self._closed_in_thread = False
        self._head_failing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """LISTEN and read the baseline head in the caller's thread (errors surface here)."""
        if self._libpq_url is not None:
            self._conn = self._connect()
        # After LISTEN: a commit racing with start() is either in the baseline or notified.
        self._last = self._read_head()
        self._thread = threading.Thread(target=self._run, name="ripcord-state-notify", daemon=True)
        self._thread.start()

    def add(self, callback: Callable[[int], None]) -> Callable[[], None]:
        """Register ``callback``; returns the function that unregisters it."""
        with self._lock:
            token = next(self._ids)
            self._callbacks[token] = callback

        def unsubscribe() -> None:
            with self._lock:
                self._callbacks.pop(token, None)

        return unsubscribe

    def poke(self) -> None:
        """Read the head now instead of at the next poll (after a commit made here)."""
        with contextlib.suppress(BlockingIOError, OSError):  # full pipe: a wake is pending
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Stop the thread and the LISTEN connection; callbacks are not called afterwards."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._callbacks.clear()
        if self._thread is threading.current_thread():
            # close() from a callback: joining ourselves is impossible; the loop ends next
            # and `_run` releases the resources.
            self._closed_in_thread = True
            return
        self.poke()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # stuck in a callback: leave it its fds, it is a daemon
                log.warning("state: notifier thread did not stop within 5s")
                return
        self._release()

    def _release(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        assert self._libpq_url is not None
        conn = psycopg.connect(
            self._libpq_url,
            autocommit=True,
            application_name=self._application_name,
            connect_timeout=10,
            # Notice a dead server on an idle connection (the head poll covers the gap).
            keepalives=1,
            keepalives_idle=10,
            keepalives_interval=5,
            keepalives_count=3,
        )
        try:
            conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
        except BaseException:
            conn.close()
            raise
        return conn

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            if self._closed_in_thread:
                self._release()

    def _loop(self) -> None:
        backoff = 0.1
        next_poll = time.monotonic() + self._poll_interval
        while not self._closed:
            if self._libpq_url is not None and self._conn is None:
                try:
                    self._conn = self._connect()
                except Exception as exc:
                    log.warning(
                        "state: LISTEN reconnect failed (%s); retrying in %.1fs", exc, backoff
                    )
                    self._sleep(backoff)
                    backoff = min(backoff * 2, RECONNECT_MAX_S)
                    continue
                log.info("state: LISTEN connection re-established")
                backoff = 0.1
                self._check_head()  # whatever was committed while we were away
            conn = self._conn
            fds = [self._wake_r]
            if conn is not None:
                try:
                    fds.append(conn.fileno())
                except psycopg.Error:  # already broken: reconnect on the next turn
                    self._drop(conn, "LISTEN connection lost")
                    continue
            ready = _wait(fds, max(0.0, next_poll - time.monotonic()))
            if self._closed:
                break
            woken = self._wake_r in ready
            if woken:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            if conn is not None and len(fds) > 1 and fds[1] in ready:
                self._drain(conn)
            if woken or time.monotonic() >= next_poll:
                self._check_head()
                next_poll = time.monotonic() + self._poll_interval

    def _drain(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        try:
            versions = [n.payload for n in conn.notifies(timeout=0)]
        except psycopg.Error as exc:
            self._drop(conn, f"LISTEN connection lost ({exc})")
            return
        for payload in versions:
            try:
                version = int(payload)
            except ValueError:
                self._check_head()
            else:
                self._deliver(version)

    def _check_head(self) -> None:
        try:
            version = self._read_head()
        except Exception as exc:
            if not self._head_failing:  # once per outage, not every 50 ms
                log.warning("state: reading the head version failed: %s", exc)
            self._head_failing = True
            return
        self._head_failing = False
        self._deliver(version)

    def _deliver(self, version: int) -> None:
        with self._lock:
            if version <= self._last or self._closed:
                return
            self._last = version
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            try:
                callback(version)
            except Exception:
                log.exception("state: change callback failed")

    def _drop(self, conn: psycopg.Connection[tuple[object, ...]], why: str) -> None:
        log.warning("state: %s; reconnecting", why)
        with contextlib.suppress(Exception):
            conn.close()
        self._conn = None

    def _sleep(self, seconds: float) -> None:
        # Interruptible by close() through the wake pipe.
        _wait([self._wake_r], seconds)


def _wait(fds: list[int], timeout: float) -> set[int]:
    """The fds readable within ``timeout`` seconds (poll, not select: fds may exceed 1024)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return {fd for fd, _ in poller.poll(timeout * 1000)}
