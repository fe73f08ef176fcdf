"""`ripcord demo`: the daemon on the payment flags, a few evaluations, and a live flag change.

Runs the daemon as a real subprocess on a scratch copy of `deploy/flags/payments.flagd.json`,
talks to it over gRPC like any client would, and edits the file to show a change arriving.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from flagd.process import REPO, DaemonProcess
from ripcord.flags_cli import main as flags_main
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as ev
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2_grpc as ev_grpc
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as admin_pb
from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc as admin_grpc

FLAGS = REPO / "deploy" / "flags" / "payments.flagd.json"
RELEASE = "payments.new-router.enabled"
CIRCUIT = "payments.new-router.circuit-open"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _ctx(**values: Any) -> Struct:
    struct = Struct()
    struct.update(values)
    return struct


class _Events(threading.Thread):
    """Prints EventStream messages as they arrive and remembers when each came."""

    def __init__(self, channel: grpc.Channel):
        super().__init__(daemon=True)
        self.stub = ev_grpc.ServiceStub(channel)
        self.arrivals: list[tuple[float, str, dict[str, Any]]] = []
        self.ready = threading.Event()
        self.changed = threading.Event()

    def run(self) -> None:
        try:
            for message in self.stub.EventStream(ev.EventStreamRequest()):
                data = MessageToDict(message.data)
                self.arrivals.append((time.monotonic(), message.type, data))
                flags = ", ".join(data.get("flags", {}))
                print(f"   [event stream] {message.type} {flags}", flush=True)
                if message.type == "provider_ready":
                    self.ready.set()
                elif message.type == "configuration_change":
                    self.changed.set()
        except grpc.RpcError:
            pass


def _edit(path: Path, change: Any) -> float:
    doc = json.loads(path.read_text())
    change(doc["flags"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, path)  # atomic, like a ConfigMap update
    return time.monotonic()


def _split(stub: ev_grpc.ServiceStub, n: int = 1000) -> int:
    on = 0
    for i in range(n):
        r = stub.ResolveBoolean(
            ev.ResolveBooleanRequest(flag_key=RELEASE, context=_ctx(targetingKey=f"merchant-{i}"))
        )
        on += r.value
    return on


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns the exit code."""
    parser = argparse.ArgumentParser(prog="ripcord demo", description=__doc__)
    parser.add_argument(
        "--workdir", default=str(REPO / ".state" / "demo"), help="scratch directory"
    )
    args = parser.parse_args(argv)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    flags = work / "payments.flagd.json"
    shutil.copy(FLAGS, flags)
    state = work / "state"
    shutil.rmtree(state, ignore_errors=True)  # every demo starts from the checked-in flags
    # A throwaway operator token for this run only (real deployments use --token-file).
    token = secrets.token_urlsafe(24)
    daemon = DaemonProcess(
        "--uri", f"file:{flags}", "--state-dir", str(state),
        preferred_ports=(8013, 8014, 8015), capture=False,
        env={"RIPCORD_TOKENS": f"demo-oncall:operator:{token}"},
    )  # fmt: skip
    port, mgmt, sync = daemon.port, daemon.management_port, daemon.sync_port
    shown = flags.relative_to(REPO) if flags.is_relative_to(REPO) else flags
    _say(f"starting the flag daemon on {shown}")
    print("   $ python " + " ".join(daemon.command[1:]))
    try:
        daemon.start(timeout=15)
        print(f"   ready: evaluation :{port}, sync :{sync}, management :{mgmt}")

        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = ev_grpc.ServiceStub(channel)
        events = _Events(channel)
        events.start()
        events.ready.wait(5)

        _say("evaluations (flagd.evaluation.v2, as any OpenFeature flagd provider sends them)")
        for key, ctx in [
            (CIRCUIT, _ctx(targetingKey="merchant-1")),
            (RELEASE, _ctx(targetingKey="merchant-1")),
            ("payments.dynamic-currency.enabled", _ctx(targetingKey="customer-7", dcc_opt_in=True)),
            ("payments.fx-provider.kill-switch", _ctx()),
        ]:
            r = stub.ResolveBoolean(ev.ResolveBooleanRequest(flag_key=key, context=ctx))
            print(f"   {key:<36} value={r.value!s:<5} variant={r.variant:<9} reason={r.reason}")
        print(f"   {RELEASE}: {_split(stub)} of 1000 merchants on the new router")

        _say(f"live change: edit the file to roll {RELEASE} out to 25%")
        events.changed.clear()
        t0 = _edit(
            flags,
            lambda f: f[RELEASE]["targeting"].update({"fractional": [["on", 25], ["off", 75]]}),
        )
        if not events.changed.wait(3):
            print("no configuration_change arrived", file=sys.stderr)
            return 1
        print(
            f"   change seen by the stream {1000 * (events.arrivals[-1][0] - t0):.0f} ms"
            " after the write (file polling included)"
        )
        print(f"   {RELEASE}: {_split(stub)} of 1000 merchants on the new router")

        _say("2 AM: on-call opens the circuit through the admin API (durable, audited)")
        admin = admin_grpc.FlagAdminStub(channel)
        events.changed.clear()
        t0 = time.monotonic()
        reply = admin.SetDefaultVariant(
            admin_pb.SetDefaultVariantRequest(
                key=CIRCUIT, variant="on", reason="INC-42: new router error spike"
            ),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        returned = time.monotonic()
        events.changed.wait(3)
        print(
            f"   committed as version {reply.version} by {reply.change.actor} in "
            f"{1000 * (returned - t0):.1f} ms; the stream had it "
            f"{1000 * (events.arrivals[-1][0] - returned):+.1f} ms after the call returned"
        )
        r = stub.ResolveBoolean(ev.ResolveBooleanRequest(flag_key=CIRCUIT, context=_ctx()))
        print(f"   {CIRCUIT} now answers value={r.value} variant={r.variant}")
        print("   $ ripcord flags list")
        env_server = ["--server", f"127.0.0.1:{port}"]
        os.environ["RIPCORD_TOKEN"] = token
        os.environ.setdefault("COLUMNS", "150")  # tables stay readable in a pipe
        flags_main([*env_server, "list"])
        print(f"   $ ripcord flags audit {CIRCUIT}")
        flags_main([*env_server, "audit", CIRCUIT])

        _say("an invalid edit is rejected; the last good configuration stays in service")
        _edit(flags, lambda f: f[CIRCUIT].update({"defaultVariant": "onn"}))
        time.sleep(0.8)
        detail = daemon.readyz()
        print(f"   /readyz: {detail['sources'][0]['last_error']}")
        r = stub.ResolveBoolean(ev.ResolveBooleanRequest(flag_key=CIRCUIT, context=_ctx()))
        print(f"   {CIRCUIT} still answers value={r.value} variant={r.variant}")

        _say("graceful stop (SIGTERM): streams are told provider_shutdown")
        code = daemon.stop()
        time.sleep(0.1)
        print(f"   daemon exited with {code}")
        channel.close()
        return 0 if code == 0 else 1
    finally:
        daemon.kill()
