"""A real Prometheus on loopback (Debian's package): for the rehearsal and the integration tests.

The scrape config is `deploy/prometheus/prometheus.yml` (the one an operator runs by hand) with
the targets moved to the ports the processes actually got and a faster scrape interval, so
the job names the AnalysisTemplate queries are the checked-in ones.
"""

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

import yaml

from flagd.process import free_port

BINARY = "/usr/bin/prometheus"
CHECKED_IN_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "prometheus.yml"
INSTALL_HINT = "install it with `make prometheus` or `apt-get install -y prometheus` (Debian)"

__all__ = ["LocalPrometheus", "PrometheusMissing", "checked_in_config", "find_binary"]


class PrometheusMissing(RuntimeError):
    """No prometheus binary on this machine."""


def find_binary() -> str:
    """Path of the prometheus binary; PrometheusMissing says how to install it."""
    found = shutil.which("prometheus") or (BINARY if Path(BINARY).exists() else None)
    if found is None:
        raise PrometheusMissing(f"prometheus not found: {INSTALL_HINT}")
    return found


def checked_in_config(
    targets: Mapping[str, Sequence[str]], scrape_interval: str = "1s"
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with each job's targets replaced by ``targets[job]``
    (jobs not named keep theirs) and every interval set to ``scrape_interval``."""
    config: dict[str, Any] = yaml.safe_load(CHECKED_IN_CONFIG.read_text())
    config["global"].update(
        scrape_interval=scrape_interval,
        scrape_timeout=scrape_interval,
        evaluation_interval=scrape_interval,
    )
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job["static_configs"] = [{"targets": list(targets[job["job_name"]])}]
    unknown = set(targets) - {job["job_name"] for job in config["scrape_configs"]}
    if unknown:
        raise ValueError(f"no job {sorted(unknown)} in {CHECKED_IN_CONFIG}")
    return config


class LocalPrometheus:
    """`prometheus` with its own config and TSDB under ``workdir``; stop() when done."""

    def __init__(
        self,
        workdir: Path,
        targets: Sequence[tuple[str, str, Mapping[str, str]]] = (),  # (job, host:port, labels)
        scrape_interval: str = "1s",
        *,
        config: Mapping[str, Any] | None = None,
        port: int | None = None,
    ) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if config is None:
            config = {
                "global": {
                    "scrape_interval": scrape_interval,
                    "evaluation_interval": scrape_interval,
                },
                "scrape_configs": [
                    {
                        "job_name": job,
                        "static_configs": [{"targets": [target], "labels": dict(labels)}],
                    }
                    for job, target, labels in targets
                ],
            }
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(dict(config)))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> LocalPrometheus:
        """Start it and wait until /-/ready answers."""
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [find_binary(), f"--config.file={self.config}",
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
        if status != 200:
            raise RuntimeError(f"prometheus answered {status} to {query!r}: {body[:500]}")
        return json.loads(body)["data"]["result"]

    def query_range(self, query: str, start: float, end: float, step: float) -> Any:
        """`data.result` of a range query (a matrix) that must succeed."""
        params = {"start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        status, body = self.raw_query(query, "/api/v1/query_range", **params)
        if status != 200:
            raise RuntimeError(f"prometheus answered {status} to {query!r}: {body[:500]}")
        return json.loads(body)["data"]["result"]

    def wait_for(self, query: str, timeout: float = 30) -> Any:
        """Poll until ``query`` returns a non-empty result; return it."""
        deadline = time.monotonic() + timeout
        while not (result := self.query(query)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no data for {query} after {timeout}s")
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
