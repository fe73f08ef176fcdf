"""`ripcord flags watch` as a real process: a line per change as it happens, exit 0 on Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO

import pytest

from flagd.process import REPO, DaemonProcess
from tests.cli.conftest import CIRCUIT, RELEASE, VIEWER, Run


class Watch:
    """`python -m ripcord.flags_cli watch …` with its output lines read on threads."""

    def __init__(self, daemon: DaemonProcess, *argv: str):
        env = {
            **os.environ,
            "FLAGD_ADMIN": f"127.0.0.1:{daemon.port}",
            "RIPCORD_TOKEN": VIEWER,
            "PYTHONPATH": str(REPO),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ripcord.flags_cli", *argv],
            env=env, cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, lines), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], lines: queue.Queue[str]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))

    def line(self, lines: queue.Queue[str], timeout: float = 10.0) -> str:
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            pytest.fail(f"no output within {timeout} s")

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(10)


@pytest.fixture
def watch(daemon: DaemonProcess) -> Iterator[type[Watch]]:
    started: list[Watch] = []

    def make(*argv: str) -> Watch:
        w = Watch(daemon, *argv)
        started.append(w)
        return w

    yield make  # type: ignore[misc]
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def test_watch_prints_each_change_and_exits_0_on_ctrl_c(watch, flags: Run):
    w = watch("watch")
    banner = w.line(w.err)  # printed once the starting version is known: nothing is missed
    assert banner.startswith("watching changes on 127.0.0.1:") and "after version 4" in banner
    assert flags("set", CIRCUIT, "--variant", "on", "--reason", "INC-7 open").code == 0
    line = w.line(w.out)
    assert line.startswith("v5 ")
    assert (
        f'oncall set_default_variant {CIRCUIT} (set payments) "INC-7 open": defaultVariant: off → on'
        in line
    )
    assert flags("rollout", RELEASE, "30", "--reason", "canary").code == 0
    assert "rollout: on 0% / off 100% → on 30% / off 70%" in w.line(w.out)
    assert w.interrupt() == 0


def test_watch_one_flag_as_json_lines(watch, flags: Run):
    w = watch("--json", "watch", RELEASE, "--after", "1")
    assert f"watching changes to {RELEASE}" in w.line(w.err)
    replayed = json.loads(w.line(w.out))  # --after 1 replays versions 2, 3, ... of this flag
    assert (replayed["version"], replayed["action"], replayed["flag_key"]) == (2, "file", RELEASE)
    assert flags("set", CIRCUIT, "--variant", "on", "--reason", "other flag").code == 0
    assert flags("set", RELEASE, "--state", "DISABLED", "--reason", "stop").code == 0
    record = json.loads(w.line(w.out))
    assert (record["version"], record["flag_key"], record["reason"]) == (6, RELEASE, "stop")
    assert record["after"]["state"] == "DISABLED"
    assert w.interrupt() == 0


def test_watch_against_no_server_fails(run_cli: Run):
    from flagd.process import free_port

    got = run_cli("watch", server=f"127.0.0.1:{free_port()}")
    assert got.code == 1 and got.err.startswith("error: UNAVAILABLE")
