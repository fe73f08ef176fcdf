"""`ripcord flags` against a real daemon subprocess: every subcommand's happy path, --json,
the rollout shorthand and the server's refusals as the client prints them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cli.conftest import CIRCUIT, COLOR, OPERATOR, RELEASE, REVERSED, VIEWER, Run


def state_of(flags: Run, key: str) -> dict[str, Any]:
    got = flags("get", key, "--json", token=VIEWER)
    assert got.code == 0, got.err
    data: dict[str, Any] = got.json()
    return data


def test_list_shows_the_inventory(flags: Run):
    got = flags("list", token=VIEWER)
    assert got.code == 0, got.err
    lines = [line.rstrip() for line in got.out.splitlines()]
    assert max(len(line) for line in lines) <= 100
    assert lines[0].split()[:7] == ["key", "kind", "owner", "state", "default", "rollout", "origin"]
    row = next(line for line in lines if line.startswith(f"{RELEASE} "))
    assert row.split()[1:5] == ["release", "payments", "ENABLED", "off"]
    assert "on 0% / off 100%" in row and " file " in row
    assert "STALE 2020-01-01" in got.out  # the release flag's removal date has passed
    assert "red 50% /" in got.out and "green 25%" in got.out
    assert "flags.json" in got.out  # last change by the file source
    assert "4 flags at configuration version 4; 1 STALE" in got.out


def test_list_json_and_set_filter(flags: Run):
    got = flags("list", "--json", "--set", "payments", token=VIEWER)
    assert got.code == 0, got.err
    data = got.json()
    by_key = {f["key"]: f for f in data["flags"]}
    assert set(by_key) == {CIRCUIT, RELEASE, REVERSED, COLOR}
    assert by_key[RELEASE]["stale"] is True and by_key[CIRCUIT]["stale"] is False
    assert by_key[RELEASE]["rollout"] == [
        {"variant": "on", "weight": 0},
        {"variant": "off", "weight": 100},
    ]
    assert by_key[CIRCUIT]["last_change"]["action"] == "file"
    assert data["version"] == 4
    assert flags("list", "--json", "--set", "nope", token=VIEWER).json()["flags"] == []


def test_get_shows_summary_and_definition(flags: Run):
    got = flags("get", CIRCUIT, token=VIEWER)
    assert got.code == 0, got.err
    assert "on-call" in got.out and "permanent" in got.out
    assert "definition:" in got.out and '"defaultVariant": "off"' in got.out
    assert "STALE" not in got.out
    stale = flags("get", RELEASE, token=VIEWER)
    assert "2020-01-01  STALE" in stale.out
    data = state_of(flags, CIRCUIT)
    assert data["definition"]["variants"] == {"on": True, "off": False}
    assert data["flag"]["key"] == CIRCUIT and data["flag"]["origin"].endswith("flags.json")


def test_set_default_variant_prints_version_and_audit_record(flags: Run):
    got = flags("set", CIRCUIT, "--variant", "on", "--reason", "INC-42: error spike")
    assert got.code == 0, got.err
    assert f"{CIRCUIT}: default variant set to on: now at version 5" in got.out
    for text in (
        "oncall",
        "set_default_variant",
        "INC-42: error spike",
        "defaultVariant: off → on",
    ):
        assert text in got.out
    data = state_of(flags, CIRCUIT)
    assert data["definition"]["defaultVariant"] == "on"
    assert data["flag"]["origin"] == "admin"
    assert data["flag"]["last_change"]["actor"] == "oncall"


def test_set_state_and_json(flags: Run):
    got = flags("set", RELEASE, "--state", "disabled", "--reason", "rollback", "--json")
    assert got.code == 0, got.err
    data = got.json()
    assert data["version"] == 5
    assert data["change"]["action"] == "set_state" and data["change"]["reason"] == "rollback"
    assert data["change"]["after"]["state"] == "DISABLED"
    assert state_of(flags, RELEASE)["flag"]["state"] == "DISABLED"


def test_expect_version(flags: Run):
    seen = state_of(flags, CIRCUIT)["flag"]["last_change"]["version"]
    ok = flags("set", CIRCUIT, "--variant", "on", "--reason", "a", "--expect-version", str(seen))
    assert ok.code == 0, ok.err
    stale = flags(
        "set", CIRCUIT, "--variant", "off", "--reason", "b", "--expect-version", str(seen)
    )
    assert stale.code == 1
    assert stale.err.startswith("error: ABORTED: expected_version")
    assert state_of(flags, CIRCUIT)["definition"]["defaultVariant"] == "on"


def test_rollout_with_explicit_weights(flags: Run):
    got = flags("rollout", COLOR, "red=20", "blue=30", "green=50", "--reason", "rebalance")
    assert got.code == 0, got.err
    assert "rollout set to red 20% / blue 30% / green 50%" in got.out
    assert "rollout: red 50% / blue 25% / green 25% → red 20% / blue 30% / green 50%" in got.out
    weights = state_of(flags, COLOR)["flag"]["rollout"]
    assert [(w["variant"], w["weight"]) for w in weights] == [
        ("red", 20),
        ("blue", 30),
        ("green", 50),
    ]


def test_rollout_shorthand_says_what_it_did(flags: Run):
    got = flags("rollout", RELEASE, "25", "--reason", "canary step 1")
    assert got.code == 0, got.err
    assert "reading 25 as on=25 off=75 ('on' serves true, 'off' false)" in got.out
    assert "rollout: on 0% / off 100% → on 25% / off 75%" in got.out
    weights = state_of(flags, RELEASE)["flag"]["rollout"]
    assert [(w["variant"], w["weight"]) for w in weights] == [("on", 25), ("off", 75)]


def test_rollout_shorthand_finds_on_by_value_whatever_the_order(flags: Run):
    got = flags("rollout", REVERSED, "40", "--reason", "step", "--json")
    assert got.code == 0, got.err
    assert "reading 40 as enabled=40 disabled=60" in got.err  # notes go to stderr with --json
    assert got.json()["version"] == 5
    weights = state_of(flags, REVERSED)["flag"]["rollout"]
    assert [(w["variant"], w["weight"]) for w in weights] == [("disabled", 60), ("enabled", 40)]


def test_rollout_shorthand_refuses_when_it_cannot_tell(flags: Run):
    three = flags("rollout", COLOR, "25", "--reason", "r")
    assert three.code == 2
    assert "splits between red, blue, green" in three.err and "VARIANT=PCT" in three.err
    none = flags("rollout", CIRCUIT, "25", "--reason", "r")
    assert none.code == 2 and "no fractional split" in none.err
    assert flags("rollout", RELEASE, "101", "--reason", "r").code == 2
    assert (
        flags("audit", "--json", token=VIEWER).json()["changes"][-1]["version"] == 4
    )  # nothing changed


def test_rollout_weights_not_summing(flags: Run):
    got = flags("rollout", RELEASE, "on=60", "off=60", "--reason", "r")
    assert got.code == 1
    assert got.err.startswith("error: INVALID_ARGUMENT: weights")
    unknown = flags("rollout", RELEASE, "blue=100", "--reason", "r")
    assert unknown.code == 1 and "INVALID_ARGUMENT: weights[0].variant" in unknown.err


def test_unknown_flag(flags: Run):
    for argv in (["get", "nope"], ["set", "nope", "--variant", "on", "--reason", "r"]):
        got = flags(*argv)
        assert got.code == 1
        assert got.err.startswith("error: NOT_FOUND: key: flag 'nope' not found")


def test_audit_table_and_filters(flags: Run):
    assert flags("set", CIRCUIT, "--variant", "on", "--reason", "INC-1 open").code == 0
    assert flags("rollout", RELEASE, "on=10", "off=90", "--reason", "canary").code == 0
    assert flags("set", CIRCUIT, "--variant", "off", "--reason", "INC-1 closed").code == 0
    got = flags("audit", token=VIEWER)
    assert got.code == 0, got.err
    lines = [line.rstrip() for line in got.out.splitlines()]
    assert max(len(line) for line in lines) <= 100
    assert lines[0].split() == [
        "ver",
        "time",
        "(UTC)",
        "actor",
        "action",
        "flag",
        "reason",
        "what",
        "changed",
    ]
    for text in ("INC-1 open", "defaultVariant: off → on", "canary", "on 0% / off 100%", "created"):
        assert text in got.out
    versions = [int(line.split()[0]) for line in lines[2:] if line[:3].strip().isdigit()]
    assert versions == [1, 2, 3, 4, 5, 6, 7]

    only = flags("audit", CIRCUIT, "--json", token=VIEWER).json()["changes"]
    assert [c["reason"] for c in only] == ["file changed", "INC-1 open", "INC-1 closed"]
    assert (
        only[-1]["before"]["defaultVariant"] == "on"
        and only[-1]["after"]["defaultVariant"] == "off"
    )
    ranged = flags("audit", "--from", "5", "--to", "6", "--json", token=VIEWER).json()["changes"]
    assert [c["version"] for c in ranged] == [5, 6]  # both ends inclusive
    latest = flags("audit", "--limit", "2", "--json", token=VIEWER).json()["changes"]
    assert [c["version"] for c in latest] == [6, 7]  # without --from: the latest N
    first = flags("audit", "--from", "1", "--limit", "2", "--json", token=VIEWER).json()["changes"]
    assert [c["version"] for c in first] == [1, 2]
    assert "no matching changes" in flags("audit", "nope", token=VIEWER).out


@pytest.mark.parametrize("argv", [["list"], ["get", CIRCUIT], ["audit"]])
def test_reads_work_with_a_viewer_token(flags: Run, argv):
    assert flags(*argv, token=VIEWER).code == 0


def test_token_is_never_printed(flags: Run):
    outputs = [
        flags("list", token=OPERATOR),
        flags("set", CIRCUIT, "--variant", "on", "--reason", "r", token=OPERATOR),
        flags("set", CIRCUIT, "--variant", "on", "--reason", "r", token=VIEWER),
        flags("get", "nope", token=OPERATOR),
    ]
    for got in outputs:
        for token in (OPERATOR, VIEWER):
            assert token not in got.out and token not in got.err
