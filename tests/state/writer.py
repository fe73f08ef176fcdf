"""A separate writer process for the multi-process and kill -9 tests.

Prints "ready", optionally waits for a line on stdin (so several writers start together), opens
the store, then commits ``--count`` puts of ``--key`` (0 = until killed), printing
"<version> <i>" after each commit returns, flushed, so the parent knows what was acknowledged.
"""

from __future__ import annotations

import argparse
import sys

from flagd.state import StateStore


def main() -> None:
    """Run the writer."""
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--key", default="k")
    parser.add_argument("--actor", default="writer")
    parser.add_argument("--wait-go", action="store_true")
    args = parser.parse_args()
    print("ready", flush=True)
    if args.wait_go:
        sys.stdin.readline()
    store = StateStore.open(args.url)
    i = 0
    while args.count == 0 or i < args.count:
        record = store.commit_change(
            flag_set_id="",
            key=args.key,
            action="put",
            actor=args.actor,
            reason=f"write {i}",
            before=None,
            after={"state": "ENABLED", "variants": {"on": True}, "metadata": {"i": i}},
        )
        print(record.version, i, flush=True)
        i += 1
    store.close()


if __name__ == "__main__":
    main()
