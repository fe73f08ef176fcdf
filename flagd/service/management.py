"""HTTP management port (8014): /healthz, /readyz with detail, /metrics.

A small threaded stdlib server: it only reads immutable snapshots and status records, so it
needs no coordination with the event loop that serves gRPC.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

ReadinessProbe = Callable[[], tuple[bool, dict[str, Any]]]


class ManagementServer:
    """Serves the management endpoints on a background thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: ReadinessProbe):
        registry_ = registry
        ready_ = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, "text/plain; charset=utf-8", b"ok\n")
                elif path == "/readyz":
                    is_ready, detail = ready_()
                    body = json.dumps(detail, indent=2, sort_keys=True).encode() + b"\n"
                    self._send(200 if is_ready else 412, "application/json", body)
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry_))
                else:
                    self._send(
                        404, "text/plain; charset=utf-8", b"try /healthz, /readyz or /metrics\n"
                    )

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the daemon's log

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="flagd-management", daemon=True
        )

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
