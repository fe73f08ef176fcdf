"""TokenAuthInterceptor on a real grpc.aio server, driven by the real (sync) grpc client."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flagd.auth import (
    FLAG_ADMIN_POLICY,
    Role,
    bearer_metadata,
    current_principal,
    require_principal,
)
from ripcord_pb.ripcord.admin.v1 import admin_pb2
from tests.auth.conftest import ADMIN, EXTRA, PRINCIPALS, TOKENS, ServerThread

Metadata = Sequence[tuple[str, str]]

GARBAGE = "not-a-known-token-5f2e9c1d"


def call(channel: grpc.Channel, method: str, metadata: Metadata = ()) -> list[str]:
    """Invoke `method` the way its kind requires; returns the principal names the handler saw."""
    name = method.rsplit("/", 1)[1]
    if name == "WatchChanges":
        stream = channel.unary_stream(method)(b"", metadata=metadata, timeout=5)
        return [admin_pb2.ChangeRecord.FromString(m).actor for m in stream]
    if name == "WriteStream":
        return [m.decode() for m in channel.unary_stream(method)(b"", metadata=metadata, timeout=5)]
    if name == "Chat":
        replies = channel.stream_stream(method)(iter([b"a", b"b"]), metadata=metadata, timeout=5)
        return [m.decode() for m in replies]
    if name == "Ping":
        return [channel.unary_unary(method)(b"", metadata=metadata, timeout=5).decode()]
    reply = channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
    return [admin_pb2.MutationResponse.FromString(reply).change.actor]


def rpc_error(channel: grpc.Channel, method: str, metadata: Metadata = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(channel, method, metadata)
    return info.value


# What the proto comments say, restated here so a policy edit has to be deliberate.
EXPECTED_ROLES = {
    **{f"/{ADMIN}/{m}": "viewer" for m in ("ListFlags", "GetFlag", "ListChanges", "WatchChanges")},
    **{f"/{ADMIN}/{m}": "operator" for m in ("SetFlagState", "SetDefaultVariant", "SetRollout")},
    **{f"/{ADMIN}/{m}": "admin" for m in ("PutFlag", "DeleteFlag", "ReleaseOverride")},
    f"/{ADMIN}/FutureMethod": "admin",  # via the service wildcard: fail closed
    f"/{EXTRA}/WriteStream": "admin",
    f"/{EXTRA}/Chat": "admin",
}


def test_policy_names_every_flag_admin_method():
    """A new FlagAdmin RPC must get a deliberate role (until then the wildcard makes it admin)."""
    service = admin_pb2.DESCRIPTOR.services_by_name["FlagAdmin"]
    names = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert names == set(FLAG_ADMIN_POLICY) - {f"/{ADMIN}/*"}


@pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
@pytest.mark.parametrize("method", sorted(EXPECTED_ROLES))
def test_every_role_on_every_method(server: ServerThread, channel, method: str, role: str):
    required = Role.parse(EXPECTED_ROLES[method])
    metadata = bearer_metadata(TOKENS[role])
    if Role.parse(role) >= required:
        seen = call(channel, method, metadata)
        assert seen and set(seen) == {PRINCIPALS[role]}
        return
    before = server.failures("insufficient_role", method)
    err = rpc_error(channel, method, metadata)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"requires role {required}" in err.details()
    assert repr(PRINCIPALS[role]) in err.details()
    assert server.failures("insufficient_role", method) == before + 1


@pytest.mark.parametrize(
    ("metadata", "reason", "hint"),
    [
        ((), "missing_token", "authorization: Bearer <token>"),
        ((("authorization", f"Bearer {GARBAGE}"),), "unknown_token", "unknown bearer token"),
        ((("authorization", f"Basic {TOKENS['admin']}"),), "bad_scheme", "Bearer <token>"),
        ((("authorization", TOKENS["admin"]),), "bad_scheme", "Bearer <token>"),
        ((("authorization", "Bearer "),), "bad_scheme", "Bearer <token>"),
        # A token that is not ours, even if well-formed, and a correct token with the wrong case.
        ((("authorization", f"Bearer {TOKENS['admin'].upper()}"),), "unknown_token", "unknown"),
    ],
    ids=["missing", "garbage", "basic-scheme", "no-scheme", "empty", "wrong-case"],
)
@pytest.mark.parametrize(
    "method", [f"/{ADMIN}/GetFlag", f"/{ADMIN}/WatchChanges", f"/{EXTRA}/Chat"]
)
def test_unauthenticated(server: ServerThread, channel, metadata, reason, hint, method):
    before = server.failures(reason, method)
    err = rpc_error(channel, method, metadata)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert hint in err.details()
    assert server.failures(reason, method) == before + 1


def test_stream_rejection_does_not_wait_for_requests(channel):
    """The rejection keeps the method's cardinality, so it answers before any request."""
    release = threading.Event()

    def requests() -> Iterator[bytes]:
        release.wait(5)  # send nothing (and keep the stream open) until the test is done
        yield from ()

    started = time.monotonic()
    replies = channel.stream_stream(f"/{EXTRA}/Chat")(requests(), timeout=5)
    try:
        with pytest.raises(grpc.RpcError) as info:
            next(replies)
    finally:
        release.set()
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 2


def test_scheme_is_case_insensitive(channel):
    metadata = (("authorization", f"bearer  {TOKENS['viewer']}"),)
    assert call(channel, f"/{ADMIN}/ListFlags", metadata) == [PRINCIPALS["viewer"]]


def test_unlisted_method_is_open_and_has_no_principal(channel):
    assert call(channel, f"/{EXTRA}/Ping") == ["<none>"]
    # Tokens on open methods are not even looked at (no hashing on the evaluation hot path).
    assert call(channel, f"/{EXTRA}/Ping", bearer_metadata(GARBAGE)) == ["<none>"]


def test_principal_does_not_leak_into_the_next_call(channel):
    assert call(channel, f"/{ADMIN}/PutFlag", bearer_metadata(TOKENS["admin"])) == ["root@ops"]
    assert call(channel, f"/{EXTRA}/Ping") == ["<none>"]


def test_require_principal_outside_a_protected_call():
    assert current_principal() is None
    with pytest.raises(RuntimeError, match="no authenticated principal"):
        require_principal()


def test_unknown_method_stays_unimplemented(server: ServerThread, channel):
    err = rpc_error(channel, f"/{ADMIN}/NoSuchMethod")
    assert err.code() == grpc.StatusCode.UNIMPLEMENTED
    assert server.failures("missing_token", f"/{ADMIN}/NoSuchMethod") == 0


def test_require_token_for_all(strict_server: ServerThread):
    with grpc.insecure_channel(f"127.0.0.1:{strict_server.port}") as channel:
        err = rpc_error(channel, f"/{EXTRA}/Ping")
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert strict_server.failures("missing_token", f"/{EXTRA}/Ping") == 1
        assert call(channel, f"/{EXTRA}/Ping", bearer_metadata(TOKENS["viewer"])) == ["alice"]
        # Policy entries keep their own roles.
        err = rpc_error(channel, f"/{ADMIN}/SetRollout", bearer_metadata(TOKENS["viewer"]))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # Probes and discovery carry no token and stay open.
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([request])
        )
        services = {s.name for r in replies for s in r.list_services_response.service}
        assert ADMIN in services


def test_rejections_are_logged_with_peer_and_never_the_token(channel, caplog):
    caplog.set_level(logging.WARNING, logger="flagd.auth")
    rpc_error(channel, f"/{ADMIN}/SetRollout", bearer_metadata(GARBAGE))
    rpc_error(channel, f"/{ADMIN}/DeleteFlag", bearer_metadata(TOKENS["operator"]))
    rpc_error(channel, f"/{ADMIN}/GetFlag", (("authorization", f"Basic {TOKENS['admin']}"),))
    call(channel, f"/{ADMIN}/SetRollout", bearer_metadata(TOKENS["operator"]))
    records = [r for r in caplog.records if r.name == "flagd.auth"]
    assert [r.levelno for r in records] == [logging.WARNING] * 3
    messages = [r.getMessage() for r in records]
    assert all("127.0.0.1" in m for m in messages), messages
    assert "UNAUTHENTICATED /ripcord.admin.v1.FlagAdmin/SetRollout" in messages[0]
    assert "PERMISSION_DENIED" in messages[1] and "'canary-runner'" in messages[1]
    for secret in (GARBAGE, *TOKENS.values()):
        assert secret not in caplog.text
        assert all(secret not in str(r.args) for r in caplog.records)
