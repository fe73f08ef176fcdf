"""EventStream, SyncFlags, file reloads and graceful shutdown against a daemon subprocess."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import grpc
import pytest

from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from ripcord_pb.flagd.sync.v1 import sync_pb2
from tests.daemon.conftest import write_flags


def flags_doc(default: str = "on", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "flags": {
            "a": {
                "state": "ENABLED",
                "variants": {"on": True, "off": False},
                "defaultVariant": default,
            },
            "b": {"state": "ENABLED", "variants": {"x": "1", "y": "2"}, "defaultVariant": "x"},
        }
    }
    doc["flags"].update(extra or {})
    return doc


def pump(stream) -> queue.Queue[tuple[float, Any]]:
    """Read a server stream on a thread into a queue of (arrival time, message)."""
    q: queue.Queue[tuple[float, Any]] = queue.Queue()

    def run() -> None:
        try:
            for message in stream:
                q.put((time.monotonic(), message))
        except grpc.RpcError as exc:
            q.put((time.monotonic(), exc))

    threading.Thread(target=run, daemon=True).start()
    return q


def test_event_stream_ready_change_and_shutdown(daemon_factory, flag_file):
    path = flag_file(flags_doc())
    d = daemon_factory("--uri", f"file:{path}")
    events = pump(d.v2().EventStream(v2.EventStreamRequest()))
    _, first = events.get(timeout=2)
    assert first.type == "provider_ready"

    extra = {"c": {"state": "ENABLED", "variants": {"k": 1}, "defaultVariant": "k"}}
    doc = flags_doc(default="off", extra=extra)
    del doc["flags"]["b"]
    write_flags(path, doc)
    _, change = events.get(timeout=3)
    assert change.type == "configuration_change"
    flags = {k: dict(v.items()) for k, v in change.data["flags"].items()}
    assert flags == {"a": {"type": "update"}, "b": {"type": "delete"}, "c": {"type": "write"}}

    # A write that changes nothing visible sends nothing.
    write_flags(path, doc)
    with pytest.raises(queue.Empty):
        events.get(timeout=1.0)

    assert d.stop() == 0
    _, last = events.get(timeout=3)
    assert last.type == "provider_shutdown"


def test_sync_flags_snapshot_on_subscribe_and_on_change(daemon_factory, flag_file):
    path = flag_file(flags_doc())
    d = daemon_factory("--uri", f"file:{path}", "-X", "region=eu")
    sync = d.sync()
    stream = pump(sync.SyncFlags(sync_pb2.SyncFlagsRequest(provider_id="t")))
    _, first = stream.get(timeout=2)
    payload = json.loads(first.flag_configuration)
    assert set(payload["flags"]) == {"a", "b"}
    assert payload["flags"]["a"]["defaultVariant"] == "on"
    assert payload["flags"]["a"]["source"] == str(path)
    assert dict(first.sync_context.items()) == {"region": "eu"}

    write_flags(path, flags_doc(default="off"))
    _, second = stream.get(timeout=3)
    assert json.loads(second.flag_configuration)["flags"]["a"]["defaultVariant"] == "off"

    fetched = sync.FetchAllFlags(sync_pb2.FetchAllFlagsRequest())
    assert json.loads(fetched.flag_configuration) == json.loads(second.flag_configuration)
    meta = sync.GetMetadata(sync_pb2.GetMetadataRequest())
    assert dict(meta.metadata.items()) == {"region": "eu"}


def test_get_metadata_can_be_disabled(daemon_factory, flag_file):
    d = daemon_factory("--uri", f"file:{flag_file(flags_doc())}", "--disable-sync-metadata")
    with pytest.raises(grpc.RpcError) as info:
        d.sync().GetMetadata(sync_pb2.GetMetadataRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_stuck_stream_does_not_delay_others(daemon_factory, flag_file):
    """One client that never reads its stream must not hold up a change for the rest."""
    path = flag_file(flags_doc())
    d = daemon_factory("--uri", f"file:{path}")
    # The stuck client: opens a SyncFlags stream with a tiny receive window and never reads.
    stuck_channel = grpc.insecure_channel(
        f"127.0.0.1:{d.sync_port}", options=[("grpc.http2.lookahead_bytes", 1024)]
    )
    stuck_call = sync_pb2_grpc_stub(stuck_channel).SyncFlags(sync_pb2.SyncFlagsRequest())
    healthy = pump(d.sync().SyncFlags(sync_pb2.SyncFlagsRequest()))
    healthy.get(timeout=2)
    # Large payloads fill the stuck stream's flow-control window quickly.
    big = {
        f"f{i}": {"state": "ENABLED", "variants": {"v": "x" * 2000}, "defaultVariant": "v"}
        for i in range(50)
    }
    for n in range(5):
        write_flags(path, flags_doc(default="off" if n % 2 == 0 else "on", extra=big))
        _, message = healthy.get(timeout=3)
        assert json.loads(message.flag_configuration)["flags"]["a"]["defaultVariant"] == (
            "off" if n % 2 == 0 else "on"
        )
    stuck_call.cancel()
    stuck_channel.close()


def sync_pb2_grpc_stub(channel):
    from ripcord_pb.flagd.sync.v1 import sync_pb2_grpc

    return sync_pb2_grpc.FlagSyncServiceStub(channel)


def test_invalid_file_at_start_is_a_clear_exit(daemon_factory, flag_file):
    doc = flags_doc()
    doc["flags"]["a"]["defaultVariant"] = "maybe"
    path = flag_file(doc)
    d = daemon_factory("--uri", f"file:{path}", wait=False)
    assert d.proc.wait(20) == 2
    err = d.output()
    assert str(path) in err and 'flags["a"].defaultVariant' in err, err


def test_invalid_reload_keeps_last_good_config(daemon_factory, flag_file):
    path = flag_file(flags_doc())
    d = daemon_factory("--uri", f"file:{path}")
    path.write_text('{"flags": {"a": {"state": "ENABLED", "variants": {}}}}')
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        detail = d.readyz()
        if detail["sources"][0]["last_error"]:
            break
        time.sleep(0.1)
    assert "variants" in detail["sources"][0]["last_error"]
    assert d.http("/readyz")[0] == 200  # still serving the last good configuration
    r = d.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key="a"))
    assert r.value is True
    metrics = d.http("/metrics")[1]
    assert f'flagd_source_healthy{{source="{path}"}} 0.0' in metrics
    assert "flagd_source_load_errors_total" in metrics

    write_flags(path, flags_doc(default="off"))  # fixed: picked up again
    deadline = time.monotonic() + 3
    while d.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key="a")).value:
        assert time.monotonic() < deadline, "fixed file not picked up within 3 s"
        time.sleep(0.05)
    assert d.readyz()["sources"][0]["last_error"] is None


def test_edit_is_live_within_one_second(daemon_factory, flag_file):
    path = flag_file(flags_doc())
    d = daemon_factory("--uri", f"file:{path}")
    stub = d.v2()
    write_flags(path, flags_doc(default="off"))
    t0 = time.monotonic()
    while stub.ResolveBoolean(v2.ResolveBooleanRequest(flag_key="a")).value:
        time.sleep(0.01)
        assert time.monotonic() - t0 < 1.0, "edit not live within 1 s"


def test_yaml_sources_merge_later_wins_and_source_selector(daemon_factory, tmp_path):
    base = tmp_path / "base.json"
    write_flags(base, flags_doc())
    override = tmp_path / "override.yaml"
    override.write_text(
        "flags:\n  a:\n    state: ENABLED\n    variants: {on: true, off: false}\n"
        "    defaultVariant: 'off'\n"
    )
    d = daemon_factory("--uri", f"file:{base}", "--uri", f"file:{override}")
    stub = d.v2()
    assert stub.ResolveBoolean(v2.ResolveBooleanRequest(flag_key="a")).value is False
    assert stub.ResolveString(v2.ResolveStringRequest(flag_key="b")).value == "1"
    only_override = [("flagd-selector", f"source={override}")]
    with pytest.raises(grpc.RpcError) as info:
        stub.ResolveString(v2.ResolveStringRequest(flag_key="b"), metadata=only_override)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_config_version_extension_is_opt_in(daemon_factory, flag_file):
    path = flag_file(flags_doc())
    d = daemon_factory("--uri", f"file:{path}")
    plain = pump(d.sync().SyncFlags(sync_pb2.SyncFlagsRequest()))
    extended = pump(
        d.sync().SyncFlags(
            sync_pb2.SyncFlagsRequest(), metadata=[("ripcord-extensions", "config-version")]
        )
    )
    assert "$ripcord" not in json.loads(plain.get(timeout=3)[1].flag_configuration)
    first = json.loads(extended.get(timeout=3)[1].flag_configuration)
    assert first["$ripcord"]["configVersion"] == d.readyz()["configuration_version"]
    write_flags(path, flags_doc(default="off"))
    second = json.loads(extended.get(timeout=3)[1].flag_configuration)
    assert second["$ripcord"]["configVersion"] > first["$ripcord"]["configVersion"]
    assert second["flags"]["a"]["defaultVariant"] == "off"
