"""`python -m loadtest`: start a real stack and run the Locust load test + drill against it.

    python -m loadtest                               # 60 s, 20 users, master + 1 worker
    python -m loadtest --workers 2 -- -u 40 -t 2m    # master + 2 worker processes
    python -m loadtest --workers 0                   # one local Locust process
    python -m loadtest -- --drill-p99-ms 5           # anything after -- goes to locust

The stack is a flag daemon, the FX simulator and `router serve --processes N` in a temporary
directory; the Locust run gets its addresses, the operator token and the database URL. The
exit code is Locust's (see loadtest/locustfile.py: 3 drill failed, 4 payments do not reconcile).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from flagd.process import REPO, free_port
from loadtest.stack import Stack

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
DEFAULTS = ["-u", "20", "-r", "20", "-t", "60s", "--stop-timeout", "5"]


def locust_command(*args: str) -> list[str]:
    """`locust` from this interpreter's environment."""
    return [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), *args]


def run(
    stack: Stack,
    locust_args: Sequence[str],
    out: Path,
    workers: int,
    timeout: float | None = None,
    log: Path | None = None,
) -> int:
    """Run Locust (local runner, or master + ``workers``) against ``stack``; its exit code.
    With ``log``, every Locust process's output goes to that file."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sink = log.open("a") if log is not None else None
    try:
        return _run(stack, locust_args, out, workers, timeout, env, sink)
    finally:
        if sink is not None:
            sink.close()


def _run(
    stack: Stack,
    locust_args: Sequence[str],
    out: Path,
    workers: int,
    timeout: float | None,
    env: dict[str, str],
    sink: IO[str] | None,
) -> int:
    err = subprocess.STDOUT if sink is not None else None
    reports = ["--csv", str(out / "loadtest"), "--html", str(out / "loadtest.html")]
    base = ["--headless", *DEFAULTS, *reports, *stack.locust_args(), *locust_args]
    if workers <= 0:
        cmd = locust_command(*base)
        return subprocess.run(cmd, env=env, timeout=timeout, stdout=sink, stderr=err).returncode
    port = free_port()
    master = subprocess.Popen(
        locust_command("--master", "--master-bind-host", "127.0.0.1",
                       "--master-bind-port", str(port), "--expect-workers", str(workers), *base),
        env=env, stdout=sink, stderr=err,
    )  # fmt: skip
    worker = locust_command(
        "--worker", "--master-host", "127.0.0.1", "--master-port", str(port), *stack.locust_args()
    )
    procs = [subprocess.Popen(worker, env=env, stdout=sink, stderr=err) for _ in range(workers)]
    try:
        code = master.wait(timeout)
        for p in procs:
            p.wait(30)
        return code
    finally:
        for p in [master, *procs]:
            if p.poll() is None:
                p.kill()
                p.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Start a real stack and run the Locust payment load test with the drill.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--processes", type=int, default=2, help="router processes (2)")
    parser.add_argument(
        "--workers", type=int, default=1,
        help="Locust worker processes beside the master (1); 0: one local process. With a "
        "master the drill operator's clock readings are not delayed by the users' greenlets",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=REPO / ".state" / "loadtest", help="reports directory"
    )
    parser.add_argument("locust_args", nargs="*", help="after --: extra locust arguments")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="loadtest-") as tmp,
        Stack(Path(tmp), processes=args.processes) as stack,
    ):
        print(
            f"stack: routers {stack.target} (x{args.processes}), daemon {stack.admin_target}, "
            f"db {stack.db_url}",
            flush=True,
        )
        code = run(stack, args.locust_args, args.out, args.workers)
    print(f"reports: {args.out}/loadtest_stats.csv, loadtest.html, loadtest_drill.json")
    return code


if __name__ == "__main__":
    sys.exit(main())
