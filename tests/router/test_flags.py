"""`router.flags.FlagClient` against a real daemon subprocess (and one fake server for bad payloads)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from flagd.definitions import load_file, parse_document, to_sync_payload
from flagd.process import DaemonProcess, free_port
from ripcord_pb.flagd.evaluation.v1 import evaluation_pb2, evaluation_pb2_grpc
from ripcord_pb.flagd.sync.v1 import sync_pb2, sync_pb2_grpc
from ripcord_pb.ripcord.admin.v1 import admin_pb2, admin_pb2_grpc
from router.flags import FlagClient, FlagSnapshot, compile_snapshot
from router.routing import (
    CIRCUIT_OPEN,
    DYNAMIC_CURRENCY,
    FX_KILL_SWITCH,
    NEW_ROUTER,
    Decision,
    decide,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOYED_FILE = REPO / "deploy" / "flags" / "payments.flagd.json"
DEPLOYED = json.loads(DEPLOYED_FILE.read_text())
TOKEN = "operator-token-0123456789"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
T = TypeVar("T")


def run(main: Awaitable[T], timeout: float = 60.0) -> T:
    """Run one async test body with an overall bound."""

    async def bounded() -> T:
        return await asyncio.wait_for(main, timeout)

    return asyncio.run(bounded())


def route(snapshot: FlagSnapshot, merchant: str = "m-1", customer: str = "c-1") -> Decision:
    return decide(snapshot, merchant_id=merchant, customer_id=customer, dcc_opt_in=True)


def write_flags(path: Path, doc: dict[str, Any]) -> None:
    """Replace the flag file atomically, as an editor's save or a ConfigMap update does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


class Daemons:
    """Daemon processes sharing one flag file and one state directory; all killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.flag_file = tmp_path / "payments.flagd.json"
        shutil.copy(DEPLOYED_FILE, self.flag_file)
        self.state_dir = tmp_path / "state"
        self.started: list[DaemonProcess] = []

    def new(self, same_ports_as: DaemonProcess | None = None) -> DaemonProcess:
        d = DaemonProcess(
            "--uri", f"file:{self.flag_file}",
            "--state-dir", str(self.state_dir),
            env={"RIPCORD_TOKENS": f"test-operator:operator:{TOKEN}"},
        )  # fmt: skip
        if same_ports_as is not None:
            # Not `preferred_ports`: its probe bind fails while the killed daemon's
            # connections sit in TIME_WAIT, though the daemon itself (SO_REUSEADDR) can bind.
            old = same_ports_as
            d.port, d.management_port, d.sync_port = old.port, old.management_port, old.sync_port
            for option, port in (
                ("--port", d.port),
                ("--management-port", d.management_port),
                ("--sync-port", d.sync_port),
            ):
                d.args[d.args.index(option) + 1] = str(port)
        self.started.append(d)
        return d

    def start(self) -> DaemonProcess:
        return self.new().start()

    def edit(self, change: Callable[[dict[str, Any]], None]) -> None:
        doc = json.loads(self.flag_file.read_text())
        change(doc["flags"])
        write_flags(self.flag_file, doc)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    pool = Daemons(tmp_path)
    yield pool
    for d in pool.started:
        d.kill()


def client_for(d: DaemonProcess, **kwargs: Any) -> FlagClient:
    return FlagClient(f"127.0.0.1:{d.sync_port}", **kwargs)


# ----------------------------------------------------------------------------- real daemon


def test_first_snapshot_then_admin_change_swaps_it(daemons: Daemons) -> None:
    d = daemons.start()
    seen: list[FlagSnapshot] = []

    async def main() -> None:
        client = client_for(d, on_change=seen.append)
        assert client.snapshot.version == 0 and not client.snapshot.flags
        assert route(client.snapshot).reason == "no-flags"
        await client.start()
        try:
            await client.wait_until(lambda: client.snapshot.version > 0, timeout=10)
            first = client.snapshot
            assert first.version == d.readyz()["configuration_version"]
            assert set(first.flags) == set(DEPLOYED["flags"])
            assert client.status.state == "connected"
            assert client.status.version == first.version
            assert client.status.applied_at == first.applied_at >= first.received_at > 0
            assert (route(first).engine, route(first).reason) == ("legacy", "release-split")

            async with grpc.aio.insecure_channel(f"127.0.0.1:{d.port}") as channel:
                admin = admin_pb2_grpc.FlagAdminStub(channel)
                request = admin_pb2.SetDefaultVariantRequest(
                    key=CIRCUIT_OPEN, variant="on", reason="test: open the circuit"
                )
                response = await admin.SetDefaultVariant(request, metadata=AUTH)
            await client.wait_until(lambda: client.snapshot.version >= response.version, timeout=5)
            second = client.snapshot
            assert second.version == response.version > first.version
            assert (route(second).engine, route(second).reason) == ("legacy", "circuit-open")
            assert route(second).flag_version == response.version
            # The old snapshot is untouched: a request that read it finishes on it.
            assert route(first).reason == "release-split"
            # Incremental compile: only the changed flag was recompiled.
            assert second.flags[CIRCUIT_OPEN] is not first.flags[CIRCUIT_OPEN]
            for key in set(first.flags) - {CIRCUIT_OPEN}:
                assert second.flags[key] is first.flags[key]
            assert seen == [first, second] and seen[1] is second
        finally:
            await client.stop()
        stopped = client.status  # a fresh read: mypy narrowed the earlier one to "connected"
        assert stopped.state == "disconnected"
        assert client.snapshot is second

    run(main())


def test_file_edit_reaches_the_snapshot(daemons: Daemons) -> None:
    d = daemons.start()

    def full_release(flags: dict[str, Any]) -> None:
        flags[NEW_ROUTER]["targeting"]["fractional"] = [["on", 100], ["off", 0]]

    async def main() -> None:
        client = client_for(d)
        await client.start()
        try:
            await client.wait_until(lambda: client.snapshot.version > 0, timeout=10)
            first = client.snapshot
            daemons.edit(full_release)
            await client.wait_until(lambda: client.snapshot is not first, timeout=5)
            assert client.snapshot.version > first.version
            assert (route(client.snapshot).engine, route(client.snapshot).reason) == (
                "new",
                "release-split",
            )
        finally:
            await client.stop()

    run(main())


def test_daemon_killed_keeps_last_snapshot_then_restart_catches_up(daemons: Daemons) -> None:
    d = daemons.start()

    def fx_static(flags: dict[str, Any]) -> None:
        flags[FX_KILL_SWITCH]["defaultVariant"] = "on"

    async def main() -> None:
        client = client_for(d, backoff_initial=0.05, backoff_max=0.4)
        await client.start()
        try:
            await client.wait_until(lambda: client.snapshot.version > 0, timeout=10)
            before = client.snapshot
            assert route(before).fx_kill_switch is False

            d.kill()  # SIGKILL: no goodbye on the stream
            await client.wait_until(lambda: client.status.state != "connected", timeout=5)
            # It keeps retrying, and keeps serving the last snapshot meanwhile.
            await client.wait_until(lambda: client.status.reconnects >= 3, timeout=5)
            assert client.status.state in ("connecting", "disconnected")
            assert "UNAVAILABLE" in client.status.last_error
            assert client.snapshot is before
            assert client.status.version == before.version
            assert route(client.snapshot).reason == "release-split"

            daemons.edit(fx_static)  # a change made while the daemon is down
            again = daemons.new(same_ports_as=d)
            await asyncio.to_thread(again.start)
            await client.wait_until(
                lambda: client.status.state == "connected" and client.snapshot is not before,
                timeout=10,
            )
            after = client.snapshot
            assert after.version == again.readyz()["configuration_version"] > before.version
            assert route(after).fx_kill_switch is True
            assert client.status.parse_failures == 0
        finally:
            await client.stop()

    run(main())


def test_never_started_daemon_means_empty_snapshot_and_legacy() -> None:
    async def main() -> None:
        client = FlagClient(f"127.0.0.1:{free_port()}", backoff_initial=0.02, backoff_max=0.1)
        await client.start()
        try:
            await client.wait_until(lambda: client.status.reconnects >= 3, timeout=5)
            assert client.status.state in ("connecting", "disconnected")
            assert client.snapshot.version == 0 and not client.snapshot.flags
            assert client.status.applied_at == 0.0 and client.status.messages == 0
            decision = route(client.snapshot)
            assert (decision.engine, decision.reason, decision.flag_version) == (
                "legacy",
                "no-flags",
                0,
            )
        finally:
            await client.stop()

    run(main())


def test_selector_limits_the_snapshot(daemons: Daemons) -> None:
    d = daemons.start()

    async def main() -> None:
        payments = client_for(d, selector="flagSetId=payments")
        other = client_for(d, selector="flagSetId=no-such-set")
        await payments.start()
        await other.start()
        try:
            await payments.wait_until(lambda: payments.snapshot.version > 0, timeout=10)
            await other.wait_until(lambda: other.snapshot.version > 0, timeout=10)
            assert set(payments.snapshot.flags) == set(DEPLOYED["flags"])
            assert other.snapshot.flags == {}
            assert route(other.snapshot).reason == "no-flags"
        finally:
            await payments.stop()
            await other.stop()

    run(main())


def test_router_and_daemon_rpc_agree_on_buckets(daemons: Daemons) -> None:
    def half_and_half(flags: dict[str, Any]) -> None:
        flags[NEW_ROUTER]["targeting"]["fractional"] = [["on", 50], ["off", 50]]
        rule = flags[DYNAMIC_CURRENCY]["targeting"]["if"][1]
        rule["fractional"] = [["treatment", 50], ["control", 50]]

    daemons.edit(half_and_half)
    d = daemons.start()

    async def main() -> None:
        client = client_for(d)
        await client.start()
        try:
            await client.wait_until(lambda: client.snapshot.version > 0, timeout=10)
            snap = client.snapshot
            async with grpc.aio.insecure_channel(f"127.0.0.1:{d.port}") as channel:
                rpc = evaluation_pb2_grpc.ServiceStub(channel)

                async def daemon_says(key: str, context: dict[str, Any]) -> str:
                    request = evaluation_pb2.ResolveBooleanRequest(flag_key=key, context=context)
                    return str((await rpc.ResolveBoolean(request)).variant)

                engines = set()
                for i in range(150):
                    merchant, customer = f"merchant-{i}", f"customer-{i}"
                    release = await daemon_says(NEW_ROUTER, {"targetingKey": merchant})
                    decision = route(snap, merchant=merchant, customer=customer)
                    assert decision.engine == ("new" if release == "on" else "legacy"), merchant
                    engines.add(decision.engine)
                    if decision.engine == "new":
                        variant = await daemon_says(
                            DYNAMIC_CURRENCY, {"targetingKey": customer, "dcc_opt_in": True}
                        )
                        assert decision.experiment_variant == variant, customer
                assert engines == {"new", "legacy"}
        finally:
            await client.stop()

    run(main())


# ----------------------------------------------------------------------------- fake server


class FakeSync(sync_pb2_grpc.FlagSyncServiceServicer):  # type: ignore[misc]
    """A sync server that streams whatever the test queues (the real daemon never sends junk)."""

    def __init__(self) -> None:
        self.outbox: asyncio.Queue[Any] = asyncio.Queue()
        self.metadata: list[dict[str, str]] = []
        self.requests: list[Any] = []

    async def SyncFlags(self, request: Any, context: Any) -> Any:
        self.metadata.append(dict(context.invocation_metadata()))
        self.requests.append(request)
        while True:
            message = await self.outbox.get()
            yield message

    def send(self, payload: str, sync_context: dict[str, Any] | None = None) -> None:
        message = sync_pb2.SyncFlagsResponse(flag_configuration=payload)
        if sync_context is not None:
            message.sync_context.update(sync_context)
        self.outbox.put_nowait(message)


def payload(version: int, circuit: str = "off") -> str:
    flags = json.loads(json.dumps(DEPLOYED["flags"]))
    flags[CIRCUIT_OPEN]["defaultVariant"] = circuit
    return json.dumps({"flags": flags, "$ripcord": {"configVersion": version}})


def test_unusable_payloads_are_counted_and_ignored() -> None:
    bad_state = json.loads(payload(5))
    bad_state["flags"][CIRCUIT_OPEN]["state"] = "MAYBE"
    bad_version = json.loads(payload(6))
    bad_version["$ripcord"]["configVersion"] = "6"
    hook_calls: list[int] = []

    def flaky_hook(snapshot: FlagSnapshot) -> None:
        hook_calls.append(snapshot.version)
        if len(hook_calls) == 1:
            raise RuntimeError("a broken hook must not stop the stream")

    async def main() -> None:
        fake = FakeSync()
        server = grpc.aio.server()
        sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = FlagClient(
            f"127.0.0.1:{port}",
            selector="flagSetId=payments",
            token="viewer-token-0123456789",
            on_change=flaky_hook,
        )
        await client.start()
        try:
            fake.send(payload(4), sync_context={"region": "eu"})
            await client.wait_until(lambda: client.snapshot.version == 4, timeout=5)
            good = client.snapshot
            assert good.context == {"region": "eu"}

            junk = ("{not json", json.dumps(bad_state), json.dumps(bad_version), "[]")
            for failures, text in enumerate(junk, start=1):
                fake.send(text)
                await client.wait_until(
                    lambda n=failures: client.status.parse_failures == n,  # type: ignore[misc]
                    timeout=5,
                )
                assert client.snapshot is good
                assert client.status.version == 4
            assert "unusable payload" in client.status.last_error

            fake.send(payload(4), sync_context={"region": "eu"})  # unchanged: no swap
            await client.wait_until(lambda: client.status.messages == 6, timeout=5)
            assert client.snapshot is good
            fake.send(payload(4), sync_context={"region": "us"})  # same flags, new context
            await client.wait_until(lambda: client.snapshot.context == {"region": "us"}, timeout=5)

            fake.send(payload(7, circuit="on"))
            await client.wait_until(lambda: client.snapshot.version == 7, timeout=5)
            assert route(client.snapshot).reason == "circuit-open"
            assert client.snapshot.context == {}
            assert client.status.state == "connected"
            assert client.status.reconnects == 0
            assert hook_calls == [4, 4, 7]
        finally:
            await client.stop()
            await server.stop(None)
        # What the client asked for: the version extension, its selector, its token.
        headers = fake.metadata[0]
        assert headers["ripcord-extensions"] == "config-version"
        assert headers["flagd-selector"] == "flagSetId=payments"
        assert headers["authorization"] == "Bearer viewer-token-0123456789"
        assert fake.requests[0].selector == "flagSetId=payments"

    run(main())


def test_stream_end_reconnects_and_resubscribes() -> None:
    async def main() -> None:
        fake = FakeSync()
        server = grpc.aio.server()
        sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        client = FlagClient(f"127.0.0.1:{port}", backoff_initial=0.02, backoff_max=0.1)
        await client.start()
        try:
            fake.send(payload(1))
            await client.wait_until(lambda: client.snapshot.version == 1, timeout=5)
            await server.stop(None)  # ends the stream (server going away)
            await client.wait_until(lambda: client.status.state != "connected", timeout=5)
            assert client.snapshot.version == 1

            fake2 = FakeSync()
            server = grpc.aio.server()
            sync_pb2_grpc.add_FlagSyncServiceServicer_to_server(fake2, server)
            assert server.add_insecure_port(f"127.0.0.1:{port}") == port
            await server.start()
            fake2.send(payload(2, circuit="on"))
            await client.wait_until(lambda: client.snapshot.version == 2, timeout=5)
            assert client.status.state == "connected" and client.status.reconnects >= 1
        finally:
            await client.stop()
            await server.stop(None)

    run(main())


# ----------------------------------------------------------------------------- compile_snapshot


def test_compile_snapshot_matches_the_daemon_parser() -> None:
    text = to_sync_payload(load_file(DEPLOYED_FILE).flags.values())
    snap = compile_snapshot(text)
    parsed = parse_document(text, source="sync", fmt="json").flags
    assert {key: c.flag for key, c in snap.flags.items()} == parsed
    assert snap.version == 0  # no "$ripcord" extension: version unknown


def test_compile_snapshot_recompiles_only_changed_flags() -> None:
    first = compile_snapshot(payload(1))
    second = compile_snapshot(payload(2, circuit="on"), previous=first)
    assert second.flags[CIRCUIT_OPEN] is not first.flags[CIRCUIT_OPEN]
    assert all(second.flags[k] is first.flags[k] for k in first.flags if k != CIRCUIT_OPEN)
    # Python says True == 1; JSON types differ, so this is a change (and no longer boolean).
    doc = json.loads(payload(3))
    doc["flags"][CIRCUIT_OPEN]["variants"] = {"on": 1, "off": 0}
    third = compile_snapshot(json.dumps(doc), previous=first)
    assert third.flags[CIRCUIT_OPEN] is not first.flags[CIRCUIT_OPEN]
    assert route(third).reason == "flag-error"
    # Another hash recipe means recompiling everything.
    v2 = compile_snapshot(payload(1), previous=first, fractional="v2")
    assert all(v2.flags[k].fractional == "v2" for k in v2.flags)


def test_compile_snapshot_full_documents_and_rejections() -> None:
    with_refs = {
        "$evaluators": {"open": {"if": [True, "on", "off"]}},
        "metadata": {"flagSetId": "payments"},
        "flags": {CIRCUIT_OPEN: {**DEPLOYED["flags"][CIRCUIT_OPEN], "targeting": {"$ref": "open"}}},
    }
    snap = compile_snapshot(json.dumps(with_refs))
    assert route(snap).reason == "circuit-open"
    assert snap.flags[CIRCUIT_OPEN].flag.flag_set_id == "payments"
    for junk in (
        '{"flags": {"f": {"state": "ENABLED", "variants": {"a": NaN}}}}',
        '{"flags": {"f": {"state": "ENABLED", "variants": {}}}}',
        '{"flags": "all"}',
        '{"no-flags": {}}',
        '{"flags": {}, "$ripcord": {"configVersion": -1}}',
    ):
        with pytest.raises(ValueError):
            compile_snapshot(junk)


# ----------------------------------------------------------------------------- lifecycle


def test_backoff_is_capped_jittered_and_exponential() -> None:
    client = FlagClient("127.0.0.1:1", backoff_initial=0.1, backoff_max=2.0, rng=random.Random(7))
    for attempt in range(12):
        ceiling = min(2.0, 0.1 * 2**attempt)
        delays = [client._backoff(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= x <= ceiling for x in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed
    with pytest.raises(ValueError):
        FlagClient("x", backoff_initial=1.0, backoff_max=0.5)


def test_start_twice_fails_and_stop_is_idempotent() -> None:
    async def main() -> None:
        client = FlagClient(f"127.0.0.1:{free_port()}", backoff_initial=0.05)
        await client.stop()  # never started: nothing to do
        await client.start()
        with pytest.raises(RuntimeError):
            await client.start()
        await client.stop()
        await client.stop()
        assert client.status.state == "disconnected"
        with pytest.raises(TimeoutError):
            await client.wait_until(lambda: False, timeout=0.05)

    run(main())
