"""Rendering and parsing without a daemon: formats, diffs, table layout, error hints."""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import grpc
import pytest
from google.protobuf.struct_pb2 import Struct
from rich.console import Console

from ripcord import flags_render as render
from ripcord.flags_cli import UsageError, build_parser, explain, main, on_off, parse_split
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb

NOW = dt.datetime(2026, 3, 1, 14, 0, tzinfo=dt.UTC)


def struct(data: dict[str, Any]) -> Struct:
    s = Struct()
    s.update(data)
    return s


def record(version: int, **fields) -> pb.ChangeRecord:
    before, after = fields.pop("before", None), fields.pop("after", None)
    message = pb.ChangeRecord(version=version, **fields)
    message.at.FromDatetime(NOW - dt.timedelta(minutes=5))
    if before is not None:
        message.before.CopyFrom(struct(before))
    if after is not None:
        message.after.CopyFrom(struct(after))
    return message


def printed(renderable, width: int = 100) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=width, color_system=None).print(renderable)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "just now"),
        (42, "42s ago"),
        (300, "5m ago"),
        (3 * 3600 + 5, "3h ago"),
        (86400 * 12, "12d ago"),
        (-600, "in 10m"),
    ],
)
def test_relative_time(seconds, text):
    assert render.relative(NOW - dt.timedelta(seconds=seconds), NOW) == text


def test_rollout_text():
    assert render.rollout_text([("on", 25), ("off", 75)]) == "on 25% / off 75%"
    assert render.rollout_text([("a", 1), ("b", 2)]) == "a 33.3% / b 66.7%"  # relative weights
    assert render.rollout_text([]) == "-"


def test_diff_of_default_variant_rollout_and_metadata():
    before = {
        "state": "ENABLED",
        "defaultVariant": "off",
        "variants": {"on": True, "off": False},
        "targeting": {"fractional": [["on", 0], ["off", 100]]},
        "metadata": {"owner": "a"},
    }
    after = {
        **before,
        "defaultVariant": "on",
        "targeting": {"fractional": [["on", 25], ["off", 75]]},
        "metadata": {"owner": "b", "kind": "ops"},
    }
    assert render.diff_fields(before, after) == [
        "defaultVariant: off → on",
        "rollout: on 0% / off 100% → on 25% / off 75%",
        "metadata.owner: a → b",
        "metadata.kind: (none) → ops",
    ]
    assert render.diff_fields(None, after) == ["created"]
    assert render.diff_fields(before, None) == ["deleted"]


def test_diff_shows_targeting_when_more_than_the_weights_changed():
    before = {"targeting": {"fractional": [{"var": "email"}, ["on", 0], ["off", 100]]}}
    after = {"targeting": {"fractional": [{"var": "id"}, ["on", 5], ["off", 95]]}}
    lines = render.diff_fields(before, after)
    assert lines[0] == "rollout: on 0% / off 100% → on 5% / off 95%"
    assert lines[1].startswith('targeting.fractional: [{"var":"email"}') and "→" in lines[1]


def test_change_data_is_plain_json_with_integers():
    data = render.change_data(
        record(
            7,
            actor="alice",
            action="set_rollout",
            flag_key="k",
            after={"targeting": {"fractional": [["on", 25.0]]}},
        )
    )
    assert data["version"] == 7 and data["at"] == "2026-03-01T13:55:00Z"
    assert data["after"]["targeting"]["fractional"] == [["on", 25]]
    assert data["before"] is None


def test_wrap_name_breaks_at_punctuation():
    assert (
        render.wrap_name("payments.new-router.circuit-open", 20)
        == "payments.new-router.\ncircuit-open"
    )
    assert render.wrap_name("set_default_variant", 12) == "set_default_\nvariant"
    assert render.wrap_name("abcdefghij", 4) == "abcd\nefgh\nij"  # no punctuation: fold


def test_wrap_pieces_keeps_each_variant_whole():
    assert (
        render.wrap_pieces("red 50% / blue 25% / green 25%", " / ", 12)
        == "red 50% /\nblue 25% /\ngreen 25%"
    )
    assert render.wrap_pieces("on 25% / off 75%", " / ", 16) == "on 25% / off 75%"


def test_fit_widths_shrinks_in_order_through_stages():
    # natural 10+10+10 into 24: first column to its comfortable 8, then the second to 6
    assert render.fit_widths([10, 10, 10], [[8, 6, 9], [4, 4, 4]], [0, 1, 2], 24) == [8, 6, 10]
    assert render.fit_widths([10, 10], [[8, 8], [4, 4]], [0, 1], 30) == [10, 10]


def summary(key: str, **fields) -> pb.FlagSummary:
    rollout = fields.pop("rollout", [])
    flag = pb.FlagSummary(
        key=key, flag_set_id="payments", state="ENABLED", origin="/x/flags.json", **fields
    )
    for variant, weight in rollout:
        flag.rollout.add(variant=variant, weight=weight)
    flag.last_change.CopyFrom(record(3, actor="file:/x/flags.json", action="file", flag_key=key))
    return flag


def test_flags_table_fits_100_columns_and_marks_stale():
    flags = [
        summary(
            "payments.new-router.circuit-open", kind="ops", owner="on-call", default_variant="off"
        ),
        summary(
            "payments.new-router",
            kind="release",
            owner="payments",
            default_variant="off",
            rollout=[("on", 25), ("off", 75)],
            stale=True,
            removal="2020-01-01",
        ),
        summary(
            "checkout.color",
            kind="experiment",
            owner="growth",
            default_variant="red",
            rollout=[("red", 50), ("blue", 25), ("green", 25)],
        ),
    ]
    text = printed(render.flags_table(flags, NOW))
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 100
    assert lines[0].split() == [
        "key",
        "kind",
        "owner",
        "state",
        "default",
        "rollout",
        "origin",
        "last",
        "change",
    ]
    at = next(i for i, line in enumerate(lines) if line.startswith("payments.new-router. "))
    assert lines[at + 1].startswith("circuit-open ")  # the key broke at a dot, not mid-word
    assert "STALE 2020-01-01" in text
    assert "on 25% / off 75%" in text  # a two-way split stays on one line
    assert (
        "v3 5m ago" in text and "2026-03-01" in text and "13:55Z" in text and "flags.json" in text
    )
    for word in ("experiment", "payments", "on-call", "file"):
        assert word in text


def test_changes_table_fits_100_columns():
    rows = [
        record(
            9,
            actor="oncall",
            action="set_default_variant",
            flag_key="payments.new-router.circuit-open",
            reason="INC-42: error spike",
            before={"defaultVariant": "off"},
            after={"defaultVariant": "on"},
        ),
    ]
    text = printed(render.changes_table(rows))
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "defaultVariant: off → on" in text
    assert "INC-42: error spike" in text
    assert "2026-03-01" in text and "13:55:00Z" in text


def test_change_line():
    line = render.change_line(
        record(
            9,
            actor="oncall",
            action="set_default_variant",
            flag_key="k",
            flag_set_id="payments",
            reason="INC-1",
            before={"defaultVariant": "off"},
            after={"defaultVariant": "on"},
        )
    )
    assert (
        line.plain
        == 'v9 2026-03-01 13:55:00Z oncall set_default_variant k (set payments) "INC-1": defaultVariant: off → on'
    )


def test_parse_split():
    assert parse_split(["on=25", "off=75%"]) == [("on", 25), ("off", 75)]
    assert parse_split(["25"]) == 25
    for bad in (["on=x"], ["on"], ["=5", "off=95"], ["2.5"]):
        with pytest.raises(UsageError):
            parse_split(bad)


def test_on_off_chooses_by_boolean_values_then_names():
    def flag(*weights):
        f = pb.FlagSummary(key="k")
        for variant in weights:
            f.rollout.add(variant=variant, weight=50)
        return f

    assert on_off(flag("off", "on"), {"variants": {"on": True, "off": False}})[:2] == ("on", "off")
    assert on_off(flag("b", "a"), {"variants": {"a": True, "b": False}})[:2] == ("a", "b")
    assert on_off(flag("OFF", "ON"), {"variants": {"ON": "x", "OFF": "y"}})[:2] == ("ON", "OFF")
    assert "cannot tell" in on_off(flag("x", "y"), {"variants": {"x": 1, "y": 2}})
    assert "two variants" in on_off(flag("r", "g", "b"), {"variants": {}})
    assert "no fractional split" in on_off(flag(), {"variants": {}})


@pytest.mark.parametrize(
    ("code", "details", "token_set", "hint"),
    [
        (
            grpc.StatusCode.UNAVAILABLE,
            "connection refused",
            False,
            "--server HOST:PORT or FLAGD_ADMIN=HOST:PORT",
        ),
        (grpc.StatusCode.UNAUTHENTICATED, "missing credentials", False, "set RIPCORD_TOKEN"),
        (
            grpc.StatusCode.UNAUTHENTICATED,
            "unknown bearer token",
            True,
            "did not accept the token in RIPCORD_TOKEN",
        ),
        (
            grpc.StatusCode.PERMISSION_DENIED,
            "principal 'a' has role viewer; /x/Y requires role operator",
            True,
            "role operator or above",
        ),
        (grpc.StatusCode.ABORTED, "expected_version: at 6", True, "ripcord flags get"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", True, "--timeout"),
    ],
)
def test_explain_adds_a_hint(code, details, token_set, hint):
    lines = explain(code, details, server="h:1", tls=False, token_set=token_set)
    assert lines[0] == f"error: {code.name}: {details}"
    assert hint in lines[1]


@pytest.mark.parametrize("command", ["list", "get", "set", "rollout", "audit", "watch"])
def test_every_subcommand_has_help_with_an_example(command, capsys):
    assert main([command, "--help"], environ={}) == 0
    out = capsys.readouterr().out
    assert "example:" in out and f"ripcord flags {command}" in out


def test_options_work_before_and_after_the_subcommand():
    parser = build_parser({})
    args = parser.parse_args(["--server", "a:1", "list", "--json"])
    assert (args.server, args.json) == ("a:1", True)
    args = parser.parse_args(["list", "--server", "b:2"])
    assert args.server == "b:2"
    assert parser.parse_args(["list"]).server is None  # main() then uses FLAGD_ADMIN or the default


def test_usage_errors_exit_2(capsys):
    assert main(["set", "k", "--variant", "on"], environ={}) == 2  # --reason is required
    assert "--reason" in capsys.readouterr().err
    assert (
        main(["set", "k", "--variant", "on", "--state", "ENABLED", "--reason", "r"], environ={})
        == 2
    )
    assert main(["set", "k", "--state", "PAUSED", "--reason", "r"], environ={}) == 2
    assert main(["rollout", "k", "on=x", "--reason", "r"], environ={}) == 2
    assert "not a whole percentage" in capsys.readouterr().err


def test_brackets_in_user_text_are_not_markup():
    rows = [
        record(
            3, actor="a", action="set_state", flag_key="k", reason="[/red] see [bold]INC-9[/bold]"
        )
    ]
    text = printed(render.changes_table(rows), width=160)
    assert "[/red] see [bold]INC-9[/bold]" in text
    assert "[/red] see" in printed(render.record_fields(rows[0], NOW))
