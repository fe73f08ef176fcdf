"""The evaluation API over real gRPC against a daemon subprocess: outcomes and status codes
of spec A.4/A.6 on both v1 and v2, selectors, ResolveAll, and bad input."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct

from ripcord_pb.flagd.evaluation.v1 import evaluation_pb2 as v1
from ripcord_pb.flagd.evaluation.v2 import evaluation_pb2 as v2

FLAGS: dict[str, Any] = {
    "metadata": {"flagSetId": "test-set", "version": "7"},
    "flags": {
        "static-bool": {
            "state": "ENABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
            "metadata": {"owner": "team-a"},
        },
        "targeted-string": {
            "state": "ENABLED",
            "variants": {"red": "#f00", "blue": "#00f"},
            "defaultVariant": "blue",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "red", None]},
        },
        "int-flag": {
            "state": "ENABLED",
            "variants": {"ten": 10, "two": 2},
            "defaultVariant": "ten",
        },
        "float-flag": {"state": "ENABLED", "variants": {"pi": 3.5}, "defaultVariant": "pi"},
        "object-flag": {
            "state": "ENABLED",
            "variants": {"cfg": {"limit": 5, "name": "x"}},
            "defaultVariant": "cfg",
        },
        "disabled-flag": {
            "state": "DISABLED",
            "variants": {"on": True, "off": False},
            "defaultVariant": "on",
        },
        "no-default": {"state": "ENABLED", "variants": {"on": True, "off": False}},
        "bad-rule": {
            "state": "ENABLED",
            "variants": {"on": True},
            "defaultVariant": "on",
            "targeting": {"no_such_operator": [1]},
        },
        "missing-variant": {
            "state": "ENABLED",
            "variants": {"on": True},
            "defaultVariant": "on",
            "targeting": {"if": [True, "nope", "on"]},
        },
    },
}


def ctx(**values: Any) -> Struct:
    s = Struct()
    s.update(values)
    return s


@pytest.fixture
def daemon(daemon_factory, flag_file):
    return daemon_factory("--uri", f"file:{flag_file(FLAGS)}")


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_static_targeting_and_default_on_both_versions(daemon):
    for api, mod in ((daemon.v1(), v1), (daemon.v2(), v2)):
        r = api.ResolveBoolean(mod.ResolveBooleanRequest(flag_key="static-bool"))
        assert (r.value, r.variant, r.reason) == (True, "on", "STATIC")
        assert r.metadata["owner"] == "team-a" and r.metadata["flagSetId"] == "test-set"
        r = api.ResolveString(
            mod.ResolveStringRequest(flag_key="targeted-string", context=ctx(email="a@example.com"))
        )
        assert (r.value, r.variant, r.reason) == ("#f00", "red", "TARGETING_MATCH")
        r = api.ResolveString(
            mod.ResolveStringRequest(flag_key="targeted-string", context=ctx(email="a@other.org"))
        )
        assert (r.value, r.variant, r.reason) == ("#00f", "blue", "DEFAULT")
        r = api.ResolveInt(mod.ResolveIntRequest(flag_key="int-flag"))
        assert (r.value, r.variant) == (10, "ten")
        r = api.ResolveFloat(mod.ResolveFloatRequest(flag_key="float-flag"))
        assert r.value == 3.5
        r = api.ResolveObject(mod.ResolveObjectRequest(flag_key="object-flag"))
        assert dict(r.value.items()) == {"limit": 5.0, "name": "x"}


def test_disabled_and_code_default_differ_between_v1_and_v2(daemon):
    r1 = daemon.v1().ResolveBoolean(v1.ResolveBooleanRequest(flag_key="disabled-flag"))
    assert (r1.value, r1.variant, r1.reason) == (False, "", "DISABLED")
    r2 = daemon.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key="disabled-flag"))
    assert r2.reason == "DISABLED" and not r2.HasField("value") and not r2.HasField("variant")
    # A type mismatch is not reported for a disabled flag (spec A.4).
    r2s = daemon.v2().ResolveString(v2.ResolveStringRequest(flag_key="disabled-flag"))
    assert r2s.reason == "DISABLED"

    code, _ = code_of(
        lambda: daemon.v1().ResolveBoolean(v1.ResolveBooleanRequest(flag_key="no-default"))
    )
    assert code == grpc.StatusCode.NOT_FOUND
    r = daemon.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key="no-default"))
    assert r.reason == "DEFAULT" and not r.HasField("value") and not r.HasField("variant")


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (
            lambda s: s.ResolveBoolean(v2.ResolveBooleanRequest(flag_key="nope")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            lambda s: s.ResolveString(v2.ResolveStringRequest(flag_key="static-bool")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.ResolveObject(v2.ResolveObjectRequest(flag_key="int-flag")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            lambda s: s.ResolveBoolean(v2.ResolveBooleanRequest(flag_key="bad-rule")),
            grpc.StatusCode.DATA_LOSS,
        ),
        (
            lambda s: s.ResolveBoolean(v2.ResolveBooleanRequest(flag_key="missing-variant")),
            grpc.StatusCode.UNKNOWN,
        ),
        (
            lambda s: s.ResolveBoolean(v2.ResolveBooleanRequest(flag_key="")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ],
    ids=["unknown-flag", "type-mismatch", "object-vs-int", "parse-error", "general", "empty-key"],
)
def test_error_status_mapping(daemon, call, expected):
    code, details = code_of(lambda: call(daemon.v2()))
    assert code == expected, details
    # The daemon keeps serving after every error.
    assert daemon.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key="static-bool")).value


def test_selector_header_scopes_and_is_reflected(daemon):
    stub = daemon.v2()
    r = stub.ResolveBoolean(
        v2.ResolveBooleanRequest(flag_key="static-bool"),
        metadata=[("flagd-selector", "flagSetId=test-set")],
    )
    assert r.metadata["flagSetId"] == "test-set"
    code, _ = code_of(
        lambda: stub.ResolveBoolean(
            v2.ResolveBooleanRequest(flag_key="static-bool"),
            metadata=[("flagd-selector", "flagSetId=other")],
        )
    )
    assert code == grpc.StatusCode.NOT_FOUND
    code, details = code_of(
        lambda: stub.ResolveBoolean(
            v2.ResolveBooleanRequest(flag_key="static-bool"),
            metadata=[("flagd-selector", "team=payments")],
        )
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "flagd-selector" in details


def test_resolve_all(daemon):
    r = daemon.v1().ResolveAll(v1.ResolveAllRequest(context=ctx(email="z@example.com")))
    assert r.flags["static-bool"].bool_value is True
    assert r.flags["targeted-string"].string_value == "#f00"
    assert r.flags["int-flag"].double_value == 10.0
    assert r.flags["object-flag"].object_value["name"] == "x"
    assert r.flags["disabled-flag"].reason == "DISABLED"
    assert r.flags["bad-rule"].reason == "ERROR"
    assert "no-default" not in r.flags  # v1 omits flags without a default variant


def test_malformed_request_bytes_and_huge_context(daemon):
    channel = daemon.channel()
    raw = channel.unary_unary("/flagd.evaluation.v2.Service/ResolveBoolean")
    code, details = code_of(lambda: raw(b"\xff\xff\xff\xff", timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "ResolveBooleanRequest" in details
    # The context field (2) claims 5 bytes but the message ends after 2: a truncated Struct.
    code, _ = code_of(lambda: raw(b"\x0a\x01a\x12\x05ab", timeout=5))
    assert code == grpc.StatusCode.INVALID_ARGUMENT

    big = ctx(blob="x" * 1_000_000, email="q@example.com")
    r = daemon.v2().ResolveString(v2.ResolveStringRequest(flag_key="targeted-string", context=big))
    assert r.value == "#f00"
    assert daemon.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key="static-bool")).value


def test_metrics_count_evaluations(daemon):
    daemon.v2().ResolveBoolean(v2.ResolveBooleanRequest(flag_key="static-bool"))
    status, body = daemon.http("/metrics")
    assert status == 200
    assert 'flagd_evaluations_total{flag="static-bool",reason="STATIC",variant="on"}' in body
    version = daemon.readyz()["configuration_version"]
    assert version > 0 and f"flagd_config_version {float(version)}" in body
