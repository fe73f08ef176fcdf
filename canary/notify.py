"""The page: tell on-call that a canary aborted or paused, through a command or a webhook.

The operator configures the hook (`ripcord canary run --notify-command CMD --notify-webhook URL`):

* the command is run by ``/bin/sh -c CMD`` with the event as JSON on stdin and ``RIPCORD_*``
  environment variables (`RIPCORD_EVENT`, `RIPCORD_SEVERITY`, `RIPCORD_SUMMARY`, `RIPCORD_REASON`,
  `RIPCORD_FLAG`, `RIPCORD_ROLLOUT`, `RIPCORD_STEP`, `RIPCORD_WEIGHT`, `RIPCORD_FLAG_WEIGHT`); the
  admin token (`RIPCORD_TOKEN`) is removed from its environment, a pager script does not need it;
* the webhook gets the same JSON in a POST (`Content-Type: application/json`), 5 s timeout.

Delivery never raises: every failure (non-zero exit, timeout, connection refused, HTTP error)
is returned as a Delivery and logged. The driver pages only after the flag is back at 0%, so a
slow or broken hook can delay the page, never the rollback.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMMAND_TIMEOUT",
    "WEBHOOK_TIMEOUT",
    "Delivery",
    "Notifier",
    "event_environment",
]

WEBHOOK_TIMEOUT = 5.0  # seconds for the whole POST
COMMAND_TIMEOUT = 10.0  # seconds before the command is killed
TOKEN_ENV = "RIPCORD_TOKEN"  # never handed to the hook

log = logging.getLogger("ripcord.canary.notify")

# Event field -> environment variable for the command.
_ENV_FIELDS = {
    "event": "RIPCORD_EVENT",
    "severity": "RIPCORD_SEVERITY",
    "summary": "RIPCORD_SUMMARY",
    "reason": "RIPCORD_REASON",
    "flag": "RIPCORD_FLAG",
    "rollout": "RIPCORD_ROLLOUT",
    "step": "RIPCORD_STEP",
    "weight": "RIPCORD_WEIGHT",
    "flag_weight": "RIPCORD_FLAG_WEIGHT",
    "run_id": "RIPCORD_RUN_ID",
}


@dataclass(frozen=True)
class Delivery:
    """What happened to one channel: `command` or `webhook`, ok or not, and why."""

    channel: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.channel} {'ok' if self.ok else 'FAILED'}: {self.detail}"


def event_environment(event: Mapping[str, Any], base: Mapping[str, str]) -> dict[str, str]:
    """``base`` without the admin token, plus one RIPCORD_* variable per known event field."""
    env = {k: v for k, v in base.items() if k != TOKEN_ENV}
    for key, name in _ENV_FIELDS.items():
        value = event.get(key)
        if value is not None:
            env[name] = str(value)
    return env


class Notifier:
    """Sends an event to the configured command and/or webhook; ``send`` never raises."""

    def __init__(
        self,
        command: str | None = None,
        webhook: str | None = None,
        *,
        webhook_timeout: float = WEBHOOK_TIMEOUT,
        command_timeout: float = COMMAND_TIMEOUT,
        environ: Mapping[str, str] | None = None,
        report: Callable[[Delivery], None] | None = None,
    ) -> None:
        self.command = command or None
        self.webhook = webhook or None
        self.webhook_timeout = webhook_timeout
        self.command_timeout = command_timeout
        self.environ = os.environ if environ is None else environ
        self.report = report

    @property
    def configured(self) -> bool:
        """True when at least one channel is set."""
        return bool(self.command or self.webhook)

    def send(self, event: Mapping[str, Any]) -> list[Delivery]:
        """Deliver ``event`` on every configured channel, one after the other."""
        body = json.dumps(event, sort_keys=True, default=str).encode()
        results: list[Delivery] = []
        if self.command:
            results.append(self._run_command(self.command, event, body))
        if self.webhook:
            results.append(self._post(self.webhook, body))
        for result in results:
            if result.ok:
                log.info("page sent: %s", result)
            else:
                log.warning("page not sent: %s", result)
            if self.report is not None:
                self.report(result)
        return results

    def _run_command(self, command: str, event: Mapping[str, Any], body: bytes) -> Delivery:
        try:
            done = subprocess.run(
                ["/bin/sh", "-c", command],
                input=body,
                env=event_environment(event, self.environ),
                capture_output=True,
                timeout=self.command_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Delivery("command", False, f"killed after {self.command_timeout:g} s")
        except OSError as e:
            return Delivery("command", False, f"cannot run: {e}")
        if done.returncode != 0:
            tail = done.stderr.decode(errors="replace").strip()[-300:]
            return Delivery("command", False, f"exit {done.returncode}: {tail}".rstrip(": "))
        return Delivery("command", True, "exit 0")

    def _post(self, url: str, body: bytes) -> Delivery:
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.webhook_timeout) as response:
                return Delivery("webhook", True, f"HTTP {response.status}")
        except urllib.error.HTTPError as e:
            return Delivery("webhook", False, f"HTTP {e.code} from {url}")
        except (OSError, ValueError) as e:  # URLError, timeouts, refused, bad URL
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            return Delivery("webhook", False, f"{url}: {reason}")
