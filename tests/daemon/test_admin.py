"""The admin API against a real daemon subprocess with real SQLite state: every RPC, its error
paths, durability across restart and kill -9, and how file edits and admin changes combine."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct

from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as v2
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb
from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc
from tests.daemon.conftest import write_flags

CIRCUIT = "circuit"
RELEASE = "release"

FLAGS: dict[str, Any] = {
    "metadata": {"flagSetId": "payments"},
    "flags": {
        CIRCUIT: {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "metadata": {"kind": "ops", "owner": "on-call", "removal": "permanent"},
        },
        RELEASE: {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "off",
            "targeting": {"fractional": [["on", 0], ["off", 100]]},
            "metadata": {"kind": "release", "owner": "payments", "removal": "2020-01-01"},
        },
    },
}


@pytest.fixture
def files(flag_file) -> Path:
    path: Path = flag_file(FLAGS)
    return path


@pytest.fixture
def daemon(daemon_factory, files):
    return daemon_factory("--uri", f"file:{files}")


def admin(d, role: str = "admin") -> admin_pb2_grpc.FlagAdminStub:
    return d.admin(role)


def value(d, key: str, **ctx: Any) -> bool:
    s = Struct()
    s.update(ctx)
    return bool(d.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key=key, context=s)).value)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_list_and_get_show_the_inventory(daemon):
    flags = {f.key: f for f in admin(daemon).ListFlags(pb.ListFlagsRequest()).flags}
    assert set(flags) == {CIRCUIT, RELEASE}
    assert (flags[CIRCUIT].kind, flags[CIRCUIT].owner, flags[CIRCUIT].stale) == (
        "ops", "on-call", False
    )  # fmt: skip
    assert flags[RELEASE].stale  # removal date 2020-01-01 has passed
    assert [(w.variant, w.weight) for w in flags[RELEASE].rollout] == [("on", 0), ("off", 100)]
    got = admin(daemon).GetFlag(pb.GetFlagRequest(key=CIRCUIT))
    assert MessageToDict(got.definition)["defaultVariant"] == "off"
    assert got.flag.last_change.action == "file"


def test_open_the_circuit_and_roll_out(daemon):
    stub = admin(daemon)
    reply = stub.SetDefaultVariant(
        pb.SetDefaultVariantRequest(key=CIRCUIT, variant="on", reason="INC-1: errors")
    )
    assert reply.version > 0 and reply.change.actor and reply.change.action == "set_default_variant"
    assert value(daemon, CIRCUIT) is True
    stub.SetRollout(
        pb.SetRolloutRequest(
            key=RELEASE,
            weights=[
                pb.RolloutWeight(variant="on", weight=50),
                pb.RolloutWeight(variant="off", weight=50),
            ],
            reason="canary step 50%",
        )
    )
    on = sum(value(daemon, RELEASE, targetingKey=f"m-{i}") for i in range(400))
    assert 150 < on < 250
    stub.SetFlagState(pb.SetFlagStateRequest(key=CIRCUIT, state="DISABLED", reason="drill"))
    r = daemon.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key=CIRCUIT))
    assert r.reason == "DISABLED"


@pytest.mark.parametrize(
    ("make", "code", "field"),
    [
        (lambda s: s.SetDefaultVariant(pb.SetDefaultVariantRequest(key="nope", variant="on", reason="r")),
         grpc.StatusCode.NOT_FOUND, "key"),
        (lambda s: s.SetDefaultVariant(pb.SetDefaultVariantRequest(key=CIRCUIT, variant="maybe", reason="r")),
         grpc.StatusCode.INVALID_ARGUMENT, "variant"),
        (lambda s: s.SetDefaultVariant(pb.SetDefaultVariantRequest(key=CIRCUIT, variant="on")),
         grpc.StatusCode.INVALID_ARGUMENT, "reason"),
        (lambda s: s.SetFlagState(pb.SetFlagStateRequest(key=CIRCUIT, state="PAUSED", reason="r")),
         grpc.StatusCode.INVALID_ARGUMENT, "state"),
        (lambda s: s.SetRollout(pb.SetRolloutRequest(key=RELEASE, reason="r", weights=[
            pb.RolloutWeight(variant="on", weight=60), pb.RolloutWeight(variant="off", weight=60)])),
         grpc.StatusCode.INVALID_ARGUMENT, "weights"),
        (lambda s: s.SetRollout(pb.SetRolloutRequest(key=RELEASE, reason="r", weights=[
            pb.RolloutWeight(variant="blue", weight=100)])),
         grpc.StatusCode.INVALID_ARGUMENT, "weights[0].variant"),
        (lambda s: s.SetRollout(pb.SetRolloutRequest(key=CIRCUIT, reason="r", weights=[
            pb.RolloutWeight(variant="on", weight=100)])),
         grpc.StatusCode.FAILED_PRECONDITION, "key"),
        (lambda s: s.PutFlag(pb.PutFlagRequest(key="new", reason="r", definition=_struct(
            {"state": "ENABLED", "variants": {}}))),
         grpc.StatusCode.INVALID_ARGUMENT, "definition"),
        (lambda s: s.DeleteFlag(pb.DeleteFlagRequest(key="nope", reason="r")),
         grpc.StatusCode.NOT_FOUND, "key"),
        (lambda s: s.ReleaseOverride(pb.ReleaseOverrideRequest(key=CIRCUIT, flag_set_id="payments", reason="r")),
         grpc.StatusCode.FAILED_PRECONDITION, "key"),
    ],
    ids=["unknown-flag", "unknown-variant", "no-reason", "bad-state", "weights-sum",
         "weights-variant", "no-split", "invalid-definition", "delete-unknown", "no-override"],
)  # fmt: skip
def test_bad_requests_change_nothing(daemon, make, code, field):
    stub = admin(daemon)
    before = stub.ListChanges(pb.ListChangesRequest()).changes
    got, details = status_of(lambda: make(stub))
    assert got == code, details
    assert details.startswith(field), details
    assert stub.ListChanges(pb.ListChangesRequest()).changes == before
    assert value(daemon, CIRCUIT) is False


def _struct(data: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(data)
    return s


def test_put_delete_and_audit_is_complete(daemon):
    stub = admin(daemon)
    definition = {"state": "ENABLED", "variants": {"a": "x", "b": "y"}, "defaultVariant": "b",
                  "targeting": {"fractional": [["a", 50], ["b", 50]]}}  # fmt: skip
    stub.PutFlag(pb.PutFlagRequest(key="fresh", flag_set_id="payments", reason="new",
                                   definition=_struct(definition)))  # fmt: skip
    r = daemon.v2().ResolveString(
        v2.ResolveStringRequest(flag_key="fresh", context=_struct({"targetingKey": "k1"}))
    )
    assert r.reason == "TARGETING_MATCH"  # weights arrived as integers, not 50.0
    stub.DeleteFlag(pb.DeleteFlagRequest(key="fresh", reason="gone"))
    status, _ = status_of(
        lambda: daemon.v2().ResolveString(v2.ResolveStringRequest(flag_key="fresh"))
    )
    assert status == grpc.StatusCode.NOT_FOUND
    changes = stub.ListChanges(pb.ListChangesRequest(limit=1000)).changes
    versions = [c.version for c in changes]
    assert versions == list(range(1, len(versions) + 1))  # one record per version, no gaps
    assert [c.action for c in changes][-2:] == ["put", "delete"]
    only_fresh = stub.ListChanges(pb.ListChangesRequest(flag_key="fresh")).changes
    assert [c.reason for c in only_fresh] == ["new", "gone"]


def test_expected_version_rejects_a_stale_write(daemon):
    stub = admin(daemon)
    seen = stub.GetFlag(pb.GetFlagRequest(key=CIRCUIT)).flag.last_change.version
    stub.SetDefaultVariant(pb.SetDefaultVariantRequest(key=CIRCUIT, variant="on", reason="a",
                                                       expected_version=seen))  # fmt: skip
    code, details = status_of(lambda: stub.SetDefaultVariant(pb.SetDefaultVariantRequest(
        key=CIRCUIT, variant="off", reason="b", expected_version=seen)))  # fmt: skip
    assert code == grpc.StatusCode.ABORTED and "expected_version" in details
    assert value(daemon, CIRCUIT) is True


def test_concurrent_writers_with_expected_version(daemon):
    """Eight writers race on one version: exactly one wins, the rest get ABORTED."""
    seen = admin(daemon).GetFlag(pb.GetFlagRequest(key=CIRCUIT)).flag.last_change.version
    results: list[str] = []

    def write(i: int) -> None:
        try:
            admin(daemon).SetDefaultVariant(pb.SetDefaultVariantRequest(
                key=CIRCUIT, variant="on" if i % 2 else "off", reason=f"w{i}",
                expected_version=seen))  # fmt: skip
            results.append("ok")
        except grpc.RpcError as exc:
            results.append(exc.code().name)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["ABORTED"] * 7 + ["ok"]


def test_override_survives_file_reload_restart_and_kill9(daemon_factory, files):
    d = daemon_factory("--uri", f"file:{files}")
    admin(d).SetDefaultVariant(
        pb.SetDefaultVariantRequest(key=CIRCUIT, variant="on", reason="INC-2")
    )
    # A file edit of the same flag does not revert the override, but is audited.
    doc = json.loads(json.dumps(FLAGS))
    doc["flags"][CIRCUIT]["metadata"]["owner"] = "someone else"
    write_flags(files, doc)
    deadline = time.monotonic() + 3
    while not [c for c in admin(d).ListChanges(pb.ListChangesRequest(limit=100)).changes
               if c.action == "file" and c.version > 2]:  # fmt: skip
        assert time.monotonic() < deadline, "file edit not audited"
    assert value(d, CIRCUIT) is True
    assert d.stop() == 0

    d2 = daemon_factory("--uri", f"file:{files}")
    assert value(d2, CIRCUIT) is True
    admin(d2).SetDefaultVariant(
        pb.SetDefaultVariantRequest(key=CIRCUIT, variant="off", reason="ok")
    )
    acknowledged = admin(d2).SetFlagState(
        pb.SetFlagStateRequest(key=RELEASE, state="DISABLED", reason="before the crash")
    )
    assert d2.proc is not None
    d2.proc.send_signal(signal.SIGKILL)
    d2.proc.wait()

    d3 = daemon_factory("--uri", f"file:{files}")
    assert value(d3, CIRCUIT) is False
    got = admin(d3).GetFlag(pb.GetFlagRequest(key=RELEASE))
    assert got.flag.state == "DISABLED" and got.flag.origin == "admin"
    assert got.flag.last_change.version == acknowledged.version

    # Releasing the override hands the flag back to the file.
    admin(d3).ReleaseOverride(
        pb.ReleaseOverrideRequest(key=RELEASE, flag_set_id="payments", reason="done")
    )
    assert admin(d3).GetFlag(pb.GetFlagRequest(key=RELEASE)).flag.state == "ENABLED"


def test_watch_changes_streams_audit_records(daemon):
    stub = admin(daemon)
    stream = stub.WatchChanges(pb.WatchChangesRequest())
    got: list[Any] = []

    def read() -> None:
        for record in stream:
            got.append(record)
            if len(got) == 2:
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    time.sleep(0.3)
    stub.SetDefaultVariant(pb.SetDefaultVariantRequest(key=CIRCUIT, variant="on", reason="one"))
    stub.SetDefaultVariant(pb.SetDefaultVariantRequest(key=CIRCUIT, variant="off", reason="two"))
    t.join(5)
    stream.cancel()
    assert [r.reason for r in got] == ["one", "two"]


def test_roles_and_tokens_are_enforced(daemon):
    open_circuit = pb.SetDefaultVariantRequest(key=CIRCUIT, variant="on", reason="r")
    code, details = status_of(lambda: admin(daemon, None).SetDefaultVariant(open_circuit))  # type: ignore[arg-type]
    assert code == grpc.StatusCode.UNAUTHENTICATED and "authorization" in details
    code, details = status_of(lambda: admin(daemon, "viewer").SetDefaultVariant(open_circuit))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "operator" in details
    put = pb.PutFlagRequest(
        key="x",
        reason="r",
        definition=_struct({"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "a"}),
    )
    code, _ = status_of(lambda: admin(daemon, "operator").PutFlag(put))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert admin(daemon, "viewer").ListFlags(pb.ListFlagsRequest()).flags  # viewers read
    reply = admin(daemon, "operator").SetDefaultVariant(open_circuit)
    assert reply.change.actor == "test-operator"  # the audit names the token's principal
    metrics = daemon.http("/metrics")[1]
    assert (
        'flagd_auth_failures_total{method="/ripcord.admin.v1.FlagAdmin/SetDefaultVariant",reason="missing_token"} 1.0'
        in metrics
    )
    # Evaluation stays open by default, as in flagd.
    assert value(daemon, CIRCUIT) is True


def test_require_token_closes_evaluation(daemon_factory, files):
    d = daemon_factory("--uri", f"file:{files}", "--require-token")
    code, _ = status_of(lambda: value(d, CIRCUIT))
    assert code == grpc.StatusCode.UNAUTHENTICATED
