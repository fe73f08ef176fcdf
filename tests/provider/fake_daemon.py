"""A stand-in for ``python -m flagd start`` used only by the launchpad self-check.

It accepts the daemon's command line, checks that the ``--config`` file and its sources
resolve against the cwd, listens on the evaluation and sync ports, answers ``/readyz`` on the
management port, and exits 0 on SIGTERM. No gRPC, no flags: it exercises the harness's process
control (start, reuse, delayed restart on the same ports, graceful stop) without the daemon.
"""

from __future__ import annotations

import argparse
import http.server
import json
import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType


class _Readyz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["start"])
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--management-port", type=int, required=True)
    parser.add_argument("--sync-port", type=int, required=True)
    parser.add_argument("--fractional", choices=["v2", "v3"])
    args = parser.parse_args(argv)
    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    for source in config["sources"]:
        if not Path(source["uri"]).is_file():
            print(f"missing source {source['uri']}", flush=True)
            return 2
    listeners = []
    for port in (args.port, args.sync_port):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("0.0.0.0", port))
        sock.listen()
        listeners.append(sock)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", args.management_port), _Readyz)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"fake daemon ready: {vars(args)}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
