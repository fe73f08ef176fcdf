"""`ripcord flags cleanup-tickets`: due dates computed with a fixed clock, then the command
against a real daemon whose audit trail holds the rollout to 100%."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ripcord import cleanup_tickets as ct
from ripcord.cleanup_tickets import Change, Due, Flag
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb
from tests.daemon.conftest import TOKENS, RunningDaemon
from tests.deploy.conftest import DEPLOY

RELEASE = "payments.new-router.enabled"
FLAG_FILE = DEPLOY / "flags" / "payments.flagd.json"
UTC = dt.UTC


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def split(on: int, state: str = "ENABLED") -> dict[str, Any]:
    return {
        "state": state,
        "variants": {"on": True, "off": False},
        "defaultVariant": "off",
        "targeting": {"fractional": [["on", on], ["off", 100 - on]]},
    }


def change(version: int, when: str, action: str, after: dict[str, Any] | None) -> Change:
    return Change(version, at(when), action, "alice", f"v{version}", after)


def inventory() -> list[Flag]:
    """The inventory as the daemon serves it for deploy/flags/payments.flagd.json."""
    doc = json.loads(FLAG_FILE.read_text())
    set_id = doc["metadata"]["flagSetId"]
    return [
        Flag(key, set_id, f["metadata"]["kind"], f["metadata"]["owner"], f["metadata"]["removal"])
        for key, f in doc["flags"].items()
    ]


# -- on_share ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "share"),
    [
        (None, 0.0),
        (split(25), 25.0),
        (split(100), 100.0),
        (split(100, state="DISABLED"), 0.0),
        ({"variants": {"on": True, "off": False}, "defaultVariant": "on"}, 100.0),
        ({"variants": {"on": True, "off": False}, "defaultVariant": "off", "targeting": {}}, 0.0),
        (
            {
                "variants": {"a": True, "b": False},
                "targeting": {"fractional": [{"var": "merchant"}, ["a", 1], ["b", 3]]},
            },
            25.0,
        ),
        (
            {
                "variants": {"enabled": "x", "disabled": "y"},
                "targeting": {"fractional": [["enabled", 10], ["disabled", 90]]},
            },
            10.0,
        ),
        ({"variants": {"on": True, "off": False}, "targeting": {"if": [True, "on", "off"]}}, None),
        (
            {
                "variants": {"on": True, "off": False},
                "targeting": {"fractional": [["on", 0], ["off", 0]]},
            },
            None,
        ),
    ],
)
def test_on_share(definition: dict[str, Any] | None, share: float | None) -> None:
    assert ct.on_share(definition) == share


# -- due_date: pure, fixed dates --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "full_at", "due"),
    [
        ("30 days after 100%", "2026-03-31T23:30:00+00:00", dt.date(2026, 4, 30)),
        # the UTC date counts, not the operator's local one
        ("30 days after 100%", "2026-04-01T01:00:00+02:00", dt.date(2026, 4, 30)),
        ("1 day after 100 %", "2026-12-31T12:00:00+00:00", dt.date(2027, 1, 1)),
        ("2 weeks after 100%", "2026-02-20T08:00:00+00:00", dt.date(2026, 3, 6)),
        ("30 days after 100%", None, None),
        ("2026-11-30", None, dt.date(2026, 11, 30)),
        ("2026-13-01", None, None),
        ("permanent", "2026-01-01T00:00:00+00:00", None),
        ("14 days after a winner", "2026-01-01T00:00:00+00:00", None),
    ],
)
def test_due_date(rule: str, full_at: str | None, due: dt.date | None) -> None:
    result = ct.due_date(rule, at(full_at) if full_at else None)
    assert result.date == due
    assert result.why  # always says how, or why not


def test_status_against_a_fixed_today() -> None:
    today = dt.date(2026, 5, 1)
    assert ct.status(Due(dt.date(2026, 4, 30), ""), today) == "overdue"
    assert ct.status(Due(dt.date(2026, 5, 1), ""), today) == "scheduled"
    assert ct.status(Due(None, "waits"), today) == "waiting"


# -- reached_full: the audit trail ----------------------------------------------------------------


def test_reached_full_is_the_move_to_100_that_stuck() -> None:
    trail = [
        change(1, "2026-03-01T09:00:00+00:00", "file", split(0)),
        change(2, "2026-03-02T09:00:00+00:00", "set_rollout", split(50)),
        change(3, "2026-03-03T09:00:00+00:00", "set_rollout", split(100)),
        change(4, "2026-03-03T10:00:00+00:00", "set_rollout", split(0)),  # aborted
        change(5, "2026-03-05T09:00:00+00:00", "set_rollout", split(100)),
        change(6, "2026-03-06T09:00:00+00:00", "set_state", split(100)),  # still 100
    ]
    full = ct.reached_full(list(reversed(trail)))  # order of the records does not matter
    assert full is not None and (full.version, full.at) == (5, at("2026-03-05T09:00:00+00:00"))
    assert ct.reached_full(trail[:4]) is None  # back at 0 after the first 100


def test_file_edits_under_an_override_do_not_count() -> None:
    trail = [
        change(1, "2026-03-01T09:00:00+00:00", "file", split(0)),
        change(2, "2026-03-02T09:00:00+00:00", "set_rollout", split(100)),
        change(3, "2026-03-04T09:00:00+00:00", "file", split(0)),  # the override stays in force
    ]
    full = ct.reached_full(trail)
    assert full is not None and full.version == 2
    # releasing the override puts the file's 0% back in service
    released = [*trail, change(4, "2026-03-05T09:00:00+00:00", "release", split(0))]
    assert ct.reached_full(released) is None
    # a file edit to 100% with no override is a move to 100%
    by_file = [change(1, "2026-03-01T09:00:00+00:00", "file", split(100))]
    assert ct.reached_full(by_file) is not None
    deleted = [*by_file, change(2, "2026-03-02T09:00:00+00:00", "delete", None)]
    assert ct.reached_full(deleted) is None


# -- plan_tickets ---------------------------------------------------------------------------------


def test_three_tickets_with_owners_and_due_dates_from_the_inventory() -> None:
    trail = [
        change(1, "2026-03-01T09:00:00+00:00", "file", split(0)),
        change(7, "2026-03-10T14:00:00+00:00", "set_rollout", split(100)),
    ]
    flags = inventory()
    release = ct.find_release(flags, None)
    assert release.key == RELEASE and release.removal == "30 days after 100%"
    plan = ct.plan_tickets(flags, release, trail, today=dt.date(2026, 4, 10), share_now=100.0)
    remove, contract, legacy = plan.tickets
    assert [t.due.date for t in plan.tickets] == [dt.date(2026, 4, 9)] * 3
    assert [t.status for t in plan.tickets] == ["overdue"] * 3
    assert remove.owner == "payments team" and remove.flags == [RELEASE]
    assert contract.flags == ["payments.fx-backfill.enabled"]  # removal: with the contract deploy
    assert contract.owner == "payments team"
    assert legacy.flags == ["payments.new-router.shadow"]  # removal: with the legacy routing code
    assert legacy.depends_on == [remove.id]
    assert any(r.startswith("payments.new-router.circuit-open") for r in legacy.review)
    on_time = ct.plan_tickets(flags, release, trail, today=dt.date(2026, 4, 9), share_now=100.0)
    assert {t.status for t in on_time.tickets} == {"scheduled"}


def test_owners_follow_the_flags_that_go_with_a_ticket() -> None:
    flags = [
        Flag(RELEASE, "payments", "release", "payments team", "30 days after 100%"),
        Flag(
            "payments.fx-backfill.enabled",
            "payments",
            "ops",
            "data platform",
            "with the contract deploy",
        ),
    ]
    plan = ct.plan_tickets(flags, flags[0], [], today=dt.date(2026, 1, 1))
    remove, contract, legacy = plan.tickets
    assert (remove.owner, contract.owner, legacy.owner) == (
        "payments team",
        "data platform",
        "payments team",
    )
    assert legacy.flags == [] and legacy.review == []


def test_what_is_in_service_now_beats_the_trail() -> None:
    trail = [change(3, "2026-03-03T09:00:00+00:00", "set_rollout", split(100))]
    flags = inventory()
    release = ct.find_release(flags, RELEASE)
    plan = ct.plan_tickets(flags, release, trail, today=dt.date(2026, 3, 4), share_now=25.0)
    assert plan.full is None
    assert {t.status for t in plan.tickets} == {"waiting"}
    assert "at 25% now" in plan.tickets[0].due.why


def test_find_release() -> None:
    flags = inventory()
    assert ct.find_release(flags, "payments.new-router.shadow").key == "payments.new-router.shadow"
    with pytest.raises(LookupError, match="not in the inventory"):
        ct.find_release(flags, "payments.nope")
    two = [*flags, Flag("payments.retry-v2", "payments", "release", "x", "30 days after 100%")]
    with pytest.raises(LookupError, match="name the release flag with --flag"):
        ct.find_release(two, None)


def test_markdown_and_json_say_the_same() -> None:
    trail = [change(7, "2026-03-10T14:00:00+00:00", "set_rollout", split(100))]
    flags = inventory()
    plan = ct.plan_tickets(flags, ct.find_release(flags, None), trail, dt.date(2026, 3, 11), 100.0)
    data = ct.plan_data(plan)
    assert data["release_flag"]["reached_100_at"] == "2026-03-10T14:00:00Z"
    assert [t["due_date"] for t in data["tickets"]] == ["2026-04-09"] * 3
    assert [t["blocked_by"] for t in data["tickets"]] == [[], [], [plan.tickets[0].id]]
    for ticket, item in zip(plan.tickets, data["tickets"], strict=True):
        text = ct.ticket_markdown(ticket, plan)
        assert text.startswith(f"# {ticket.title}\n")
        assert "- **Due**: 2026-04-09" in text and item["description"] in text
    json.dumps(data)  # plain JSON


# -- against a real daemon ------------------------------------------------------------------------


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[RunningDaemon]:
    flags = tmp_path / "payments.flagd.json"
    shutil.copy(FLAG_FILE, flags)
    d = RunningDaemon("--uri", f"file:{flags}", state_dir=tmp_path / "state")
    d.start()
    yield d
    d.stop()


def run(daemon: RunningDaemon, *args: str, token: str | None = TOKENS["viewer"]) -> int:
    env = {"RIPCORD_TOKEN": token} if token else {}
    return ct.main(["--server", f"127.0.0.1:{daemon.port}", *args], environ=env)


def test_cleanup_tickets_against_a_real_daemon(
    daemon: RunningDaemon, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    admin = daemon.admin("operator")

    def rollout(on: int) -> Any:
        weights = [
            pb.RolloutWeight(variant="on", weight=on),
            pb.RolloutWeight(variant="off", weight=100 - on),
        ]
        return admin.SetRollout(
            pb.SetRolloutRequest(key=RELEASE, weights=weights, reason=f"canary {on}%")
        )

    # before 100%: three tickets, none scheduled
    rollout(25)
    assert run(daemon, "--format", "json", "--out", str(tmp_path / "early")) == 0
    early = json.loads((tmp_path / "early" / "cleanup-tickets.json").read_text())
    assert early["release_flag"]["share_now"] == 25.0
    assert [t["status"] for t in early["tickets"]] == ["waiting"] * 3

    reply = rollout(100)
    reached = reply.change.at.ToDatetime(tzinfo=UTC)
    assert run(daemon, "--format", "json", "--out", str(tmp_path / "json")) == 0
    data = json.loads((tmp_path / "json" / "cleanup-tickets.json").read_text())
    due = (reached.date() + dt.timedelta(days=30)).isoformat()
    assert data["release_flag"]["reached_100_version"] == reply.version
    assert data["release_flag"]["reached_100_by"] == "test-operator"
    assert [t["due_date"] for t in data["tickets"]] == [due] * 3
    assert [t["assignee"] for t in data["tickets"]] == ["payments team"] * 3
    assert [t["status"] for t in data["tickets"]] == ["scheduled"] * 3

    assert run(daemon, "--out", str(tmp_path / "md")) == 0
    names = sorted(p.name for p in (tmp_path / "md").iterdir())
    assert names == ["01-remove-flag.md", "02-not-null-contract.md", "03-delete-legacy-code.md"]
    assert f"- **Due**: {due}" in (tmp_path / "md" / "01-remove-flag.md").read_text()

    # a day after the due date, on stdout
    after = (reached.date() + dt.timedelta(days=31)).isoformat()
    capsys.readouterr()
    assert run(daemon, "--today", after) == 0
    out, err = capsys.readouterr()
    assert out.count("- **Status**: overdue") == 3
    assert err.count("overdue") == 3


def test_cleanup_tickets_needs_a_token(
    daemon: RunningDaemon, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(daemon, token=None) == 1
    assert "RIPCORD_TOKEN" in capsys.readouterr().err
    assert run(daemon, "--format", "yaml") == 2
