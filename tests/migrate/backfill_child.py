"""A backfill worker process for the SIGKILL test, started from a forkserver (fast: the modules
are preloaded there) or as ``python -m tests.migrate.backfill_child URL BATCH SLEEP_MS``."""

from __future__ import annotations

import sys
from typing import Any

from router.backfill import BackfillSettings, BackfillWorker, Checkpoint
from router.ledger import open_database


def run_child(url: str, batch: int, sleep_ms: float, ready: Any = None) -> int:
    """Run one worker with an always-on gate; ``ready.set()`` once it holds the lock."""
    db = open_database(url)
    settings = BackfillSettings(batch_size=batch, sleep_s=sleep_ms / 1000, lock_wait_s=30)

    class Announce(BackfillWorker):
        def _load_or_start(self) -> Checkpoint:
            checkpoint = super()._load_or_start()
            if ready is not None:
                ready.set()
            return checkpoint

    return 0 if Announce(db, settings=settings).run() == "complete" else 1


def child_main(url: str, batch: int, sleep_ms: float, ready: Any) -> None:
    """multiprocessing target: exit with run_child's code."""
    sys.exit(run_child(url, batch, sleep_ms, ready))


if __name__ == "__main__":
    sys.exit(run_child(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
