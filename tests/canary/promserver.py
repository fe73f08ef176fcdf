"""A real Prometheus (Debian's 2.42) started for a test on loopback, with its own config and TSDB."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from flagd.process import free_port

BINARY = "/usr/bin/prometheus"


def prometheus_binary() -> str:
    """Path of the prometheus binary; fails (never skips) the test when it is missing."""
    found = shutil.which("prometheus") or (BINARY if Path(BINARY).exists() else None)
    if found is None:
        pytest.fail(f"{BINARY} not found: install it with `apt-get install -y prometheus`")
    return found


class PrometheusServer:
    """`prometheus` scraping ``targets`` every ``scrape_interval``; stop() when done."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[tuple[str, str, Mapping[str, str]]],  # (job, host:port, labels)
        scrape_interval: str = "1s",
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": [target], "labels": dict(labels)}]}
                for job, target, labels in targets
            ],
        }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> PrometheusServer:
        """Start it and wait until /-/ready answers."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [prometheus_binary(), f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"prometheus not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def raw_query(self, query: str, path: str = "/api/v1/query", **params: str) -> tuple[int, str]:
        """(HTTP status, body) of a GET on the HTTP API."""
        qs = urllib.parse.urlencode({"query": query, **params})
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{qs}", timeout=10) as r:
                return int(r.status), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def query(self, query: str) -> Any:
        """`data.result` of an instant query that must succeed."""
        status, body = self.raw_query(query)
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def wait_for(self, query: str, timeout: float = 30) -> Any:
        """Poll until ``query`` returns a non-empty result; return it."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(query)):
            assert time.monotonic() < deadline, f"no data for {query} after {timeout}s"
            time.sleep(0.25)
        return result

    def stop(self) -> None:
        """Terminate and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
