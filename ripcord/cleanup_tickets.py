"""`ripcord flags cleanup-tickets`: the three tickets that finish a release, with due dates.

A release is not done when the flag reaches 100%: the flag, the code it guarded and the schema
it kept compatible must go. This command reads the flag inventory (`ListFlags`: kind, owner,
removal rule) and the release flag's audit trail (`ListChanges`: when it reached 100% and stayed
there) from the daemon's admin API and writes three tickets:

1. remove the release flag (due per its removal rule, e.g. "30 days after 100%");
2. apply the NOT NULL contract of the FX snapshot column (with it go the flags whose removal
   rule is "with the contract deploy");
3. delete the legacy routing code (with it go the flags removed "with the legacy routing code").

2 and 3 are due when 1 is: until the release flag is gone the legacy engine is the rollback
target, and a router build that predates the expand step (one that does not write the
column) may come back. After it, nothing can. Owners come from the inventory: the flags that go
with each ticket, else the release flag's owner.

Output: Markdown (one file per ticket, ready to paste) or JSON (one document for a tracker's
import), on stdout or in --out DIR. The due dates are computed by `due_date` and
`plan_tickets`, pure functions of the inventory, the trail and the date.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from ripcord import flags_cli
from ripcord import flags_render as render
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb

PROG = "ripcord flags cleanup-tickets"
PAGE = 1000
ADMIN_ACTIONS = ("set_state", "set_default_variant", "set_rollout", "put", "delete")
RELATIVE_RULE_RE = re.compile(r"^\s*(\d+)\s+(day|days|week|weeks)\s+after\s+100\s*%\s*$", re.I)
ISO_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")
CONTRACT_RULE_RE = re.compile(r"\bcontract\b", re.I)
LEGACY_RULE_RE = re.compile(r"\blegacy\b", re.I)
ON_NAMES = ("on", "true", "enabled", "yes")


# -- data ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One inventory entry (`ripcord flags list`)."""

    key: str
    flag_set_id: str = ""
    kind: str = ""
    owner: str = ""
    removal: str = ""


@dataclass(frozen=True)
class Change:
    """One audit record of the release flag: what was in service after it."""

    version: int
    at: dt.datetime
    action: str
    actor: str = ""
    reason: str = ""
    after: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Due:
    """A due date, or None with the reason there is none yet."""

    date: dt.date | None
    why: str


@dataclass(frozen=True)
class FullRollout:
    """When the release flag reached 100% and stayed there."""

    at: dt.datetime
    version: int
    actor: str
    reason: str


@dataclass
class Ticket:
    """One cleanup ticket."""

    id: str
    title: str
    owner: str
    due: Due
    status: str  # scheduled | overdue | waiting
    steps: list[str]
    flags: list[str] = field(default_factory=list)
    review: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """The three tickets and the facts they were computed from."""

    release: Flag
    share_now: float | None
    full: FullRollout | None
    today: dt.date
    tickets: list[Ticket]


# -- pure computation ----------------------------------------------------------------------------


def on_share(definition: Mapping[str, Any] | None) -> float | None:
    """Percentage of evaluations served an "on" variant; None when targeting decides it in a
    way this cannot read (anything but no targeting or one top-level fractional split).

    "On" variants are those whose value is true; without boolean values, names like on/enabled.
    A missing or DISABLED flag serves nobody the new path: 0.
    """
    if definition is None or definition.get("state") == "DISABLED":
        return 0.0
    variants = definition.get("variants") or {}
    on = {name for name, value in variants.items() if value is True}
    if not any(isinstance(v, bool) for v in variants.values()):
        on = {name for name in variants if str(name).lower() in ON_NAMES}
    targeting = definition.get("targeting") or {}
    if not targeting:
        return 100.0 if definition.get("defaultVariant") in on else 0.0
    if set(targeting) != {"fractional"} or not isinstance(targeting["fractional"], list):
        return None
    weights: dict[str, float] = {}
    for entry in targeting["fractional"]:
        if not isinstance(entry, list) or not entry or not isinstance(entry[0], str):
            continue  # a bucketing expression, not a variant
        weight = entry[1] if len(entry) > 1 else 1
        if not isinstance(weight, int | float) or isinstance(weight, bool):
            return None
        weights[entry[0]] = weights.get(entry[0], 0.0) + float(weight)
    total = sum(weights.values())
    if total <= 0:
        return None
    return 100.0 * sum(w for v, w in weights.items() if v in on) / total


def reached_full(changes: Sequence[Change]) -> FullRollout | None:
    """The change that put the flag at 100% for good: the latest move to 100% with no move
    away after it. None when it is not at 100% after the last change.

    Follows what was in service: an admin change sets the override; a file edit applies only
    while there is no override (overrides win over files); a release drops the override.
    """
    overridden = False
    in_service: Mapping[str, Any] | None = None
    since: FullRollout | None = None
    for change in sorted(changes, key=lambda c: c.version):
        if change.action == "file":
            if overridden:
                continue
            in_service = change.after
        elif change.action == "release":
            overridden, in_service = False, change.after
        elif change.action in ADMIN_ACTIONS:
            overridden, in_service = True, change.after
        else:
            continue
        if on_share(in_service) == 100.0:
            if since is None:
                since = FullRollout(change.at, change.version, change.actor, change.reason)
        else:
            since = None
    return since


def due_date(rule: str, full_at: dt.datetime | None) -> Due:
    """The removal date a flag's `removal` rule gives, from when it reached 100%.

    "30 days after 100%" -> that many days after the UTC date it reached 100% (None until
    then); "2026-11-30" -> that date; "permanent" -> never; anything else -> not understood.
    """
    text = rule.strip()
    relative = RELATIVE_RULE_RE.match(text)
    if relative:
        days = int(relative.group(1)) * (7 if relative.group(2).lower().startswith("week") else 1)
        if full_at is None:
            return Due(None, f"{text!r}: waits for 100%")
        reached = full_at.astimezone(dt.UTC).date()
        return Due(
            reached + dt.timedelta(days=days), f"{text!r}: {reached.isoformat()} + {days} days"
        )
    if ISO_DATE_RE.match(text):
        try:
            return Due(dt.date.fromisoformat(text[:10]), f"{text!r}: a fixed date")
        except ValueError:
            return Due(None, f"{text!r}: not a valid date")
    if text.lower() == "permanent":
        return Due(None, "permanent: never removed")
    return Due(None, f"{text!r}: no rule computes a date from this")


def status(due: Due, today: dt.date) -> str:
    """scheduled, overdue (the date has passed) or waiting (no date yet)."""
    if due.date is None:
        return "waiting"
    return "overdue" if due.date < today else "scheduled"


def find_release(inventory: Sequence[Flag], key: str | None, flag_set_id: str = "") -> Flag:
    """The release flag: ``key`` if given, else the inventory's only flag of kind release."""
    if key:
        found = [
            f
            for f in inventory
            if f.key == key and (not flag_set_id or f.flag_set_id == flag_set_id)
        ]
        if not found:
            raise LookupError(f"flag {key!r} is not in the inventory")
        if len(found) > 1:
            raise LookupError(f"flag {key!r} is in several flag sets; pick one with --set")
        return found[0]
    releases = [f for f in inventory if f.kind == "release"]
    if len(releases) != 1:
        names = ", ".join(f.key for f in releases) or "none"
        raise LookupError(f"name the release flag with --flag (release flags: {names})")
    return releases[0]


def plan_tickets(
    inventory: Sequence[Flag],
    release: Flag,
    changes: Sequence[Change],
    today: dt.date,
    share_now: float | None = None,
) -> Plan:
    """The three cleanup tickets for ``release``, from the inventory and its audit trail."""
    full = reached_full(changes)
    if share_now is not None and share_now != 100.0:
        full = None  # what is in service now wins over a trail that says otherwise
    due = due_date(release.removal, full.at if full else None)
    if full is None and RELATIVE_RULE_RE.match(release.removal):
        now = "unknown" if share_now is None else f"{share_now:g}%"
        due = Due(None, f"{due.why}; {release.key} is at {now} now")
    others = [f for f in inventory if f.key != release.key]
    with_contract = [f for f in others if CONTRACT_RULE_RE.search(f.removal)]
    with_legacy = [f for f in others if LEGACY_RULE_RE.search(f.removal)]
    family = release.key.rsplit(".", 1)[0] + "."
    fallbacks = [
        f for f in others if f.key.startswith(family) and f.removal.strip().lower() == "permanent"
    ]

    def owner(flags: Sequence[Flag]) -> str:
        owners = sorted({f.owner for f in flags if f.owner})
        return " + ".join(owners) if owners else release.owner or "unassigned"

    base = release.key
    remove_id, contract_id, legacy_id = (
        f"{base}/remove-flag",
        f"{base}/not-null-contract",
        f"{base}/delete-legacy-code",
    )
    same = Due(due.date, f"with {remove_id} ({due.why})")
    tickets = [
        Ticket(
            id=remove_id,
            title=f"Remove the release flag {release.key}",
            owner=release.owner or "unassigned",
            due=due,
            status=status(due, today),
            steps=[
                f"Confirm {release.key} is still at 100% (`ripcord flags get {release.key}`).",
                "Delete the flag from deploy/flags/payments.flagd.json and regenerate the "
                "ConfigMap (`python -m tests.deploy.flags_configmap`).",
                "Remove its evaluation from the router (router/routing.py): the new engine is "
                "the only path.",
                f"Delete the daemon's admin override, if any (`FlagAdmin/DeleteFlag` or "
                f"`ReleaseOverride` on {release.key}).",
            ],
            flags=[release.key],
            labels=["cleanup", "flag-removal", f"flag:{release.key}"],
        ),
        Ticket(
            id=contract_id,
            title="Apply the NOT NULL contract of payment_transactions.fx_rate_snapshot",
            owner=owner(with_contract),
            due=same,
            status=status(same, today),
            steps=[
                "Check the backfill is complete: no row of payment_transactions has "
                "fx_rate_snapshot NULL.",
                "Run the contract phase of the expand-contract migration (router.migrate): "
                "CHECK NOT VALID, VALIDATE, SET NOT NULL, drop the CHECK.",
                "Delete the flags that go with the contract deploy (below).",
                "Not before the release flag is gone: until then a router build that does not "
                "write the column may be rolled back to.",
            ],
            flags=[f.key for f in with_contract],
            labels=["cleanup", "schema-contract"],
        ),
        Ticket(
            id=legacy_id,
            title="Delete the legacy routing code",
            owner=owner(with_legacy),
            due=same,
            status=status(same, today),
            steps=[
                "Delete LegacyEngine (router/engines.py) and its branch in router/routing.py.",
                "Delete the flags that go with the legacy routing code (below) and their metrics.",
                f"After {remove_id}: while the release flag exists, legacy is its rollback path.",
            ],
            flags=[f.key for f in with_legacy],
            review=[
                f"{f.key} ({f.kind or 'flag'}, {f.removal}): its fallback is the legacy engine; "
                "decide what it does once that is gone"
                for f in fallbacks
            ],
            depends_on=[remove_id],
            labels=["cleanup", "dead-code"],
        ),
    ]
    return Plan(release, share_now, full, today, tickets)


# -- rendering ------------------------------------------------------------------------------------


def _utc(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def plan_data(plan: Plan) -> dict[str, Any]:
    """The plan as JSON-ready data for a tracker's import."""
    full = plan.full
    return {
        "generated_by": PROG,
        "generated_on": plan.today.isoformat(),
        "release_flag": {
            "key": plan.release.key,
            "flag_set_id": plan.release.flag_set_id,
            "owner": plan.release.owner,
            "removal": plan.release.removal,
            "share_now": plan.share_now,
            "reached_100_at": _utc(full.at) if full else None,
            "reached_100_version": full.version if full else None,
            "reached_100_by": full.actor if full else None,
        },
        "tickets": [
            {
                "external_id": t.id,
                "title": t.title,
                "assignee": t.owner,
                "due_date": t.due.date.isoformat() if t.due.date else None,
                "due_rule": t.due.why,
                "status": t.status,
                "labels": t.labels,
                "blocked_by": t.depends_on,
                "flags": t.flags,
                "description": ticket_markdown(t, plan, heading=False),
            }
            for t in plan.tickets
        ],
    }


def ticket_markdown(ticket: Ticket, plan: Plan, *, heading: bool = True) -> str:
    """One ticket as Markdown."""
    due = ticket.due.date.isoformat() if ticket.due.date else "not scheduled"
    lines = [f"# {ticket.title}", ""] if heading else []
    lines += [
        f"- **ID**: `{ticket.id}`",
        f"- **Owner**: {ticket.owner}",
        f"- **Due**: {due} ({ticket.due.why})",
        f"- **Status**: {ticket.status}",
    ]
    if ticket.depends_on:
        lines.append("- **Blocked by**: " + ", ".join(f"`{d}`" for d in ticket.depends_on))
    full = plan.full
    if full:
        lines.append(
            f"- **{plan.release.key} at 100% since**: {_utc(full.at)} (audit version "
            f"{full.version}, by {full.actor}: {full.reason})"
        )
    lines += ["", "## Steps", ""]
    lines += [f"{i}. {step}" for i, step in enumerate(ticket.steps, 1)]
    if ticket.flags:
        lines += ["", "## Flags removed with it", ""]
        lines += [f"- `{key}`" for key in ticket.flags]
    if ticket.review:
        lines += ["", "## Review", ""]
        lines += [f"- {item}" for item in ticket.review]
    return "\n".join(lines) + "\n"


def file_name(index: int, ticket: Ticket) -> str:
    return f"{index:02d}-{ticket.id.rsplit('/', 1)[1]}.md"


# -- reading the daemon ---------------------------------------------------------------------------


def read_inventory(client: flags_cli.Client, flag_set_id: str) -> list[Flag]:
    reply = client.call("ListFlags", pb.ListFlagsRequest(flag_set_id=flag_set_id))
    return [Flag(f.key, f.flag_set_id, f.kind, f.owner, f.removal) for f in reply.flags]


def read_changes(client: flags_cli.Client, flag: Flag) -> list[Change]:
    """Every audit record of the flag (ListChanges pages forwards from an exclusive version)."""
    changes: list[Change] = []
    cursor = 0
    while True:
        request = pb.ListChangesRequest(flag_key=flag.key, from_version=cursor, limit=PAGE)
        page = client.call("ListChanges", request).changes
        for record in page:
            if flag.flag_set_id and record.flag_set_id != flag.flag_set_id:
                continue
            at = render.change_time(record) or dt.datetime.fromtimestamp(0, dt.UTC)
            after = render.struct_data(record.after) if record.HasField("after") else None
            changes.append(
                Change(record.version, at, record.action, record.actor, record.reason, after)
            )
        if len(page) < PAGE:
            return changes
        cursor = page[-1].version


def read_share(client: flags_cli.Client, flag: Flag) -> float | None:
    reply = client.call("GetFlag", pb.GetFlagRequest(key=flag.key, flag_set_id=flag.flag_set_id))
    return on_share(render.struct_data(reply.definition))


# -- command line ---------------------------------------------------------------------------------


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-09-30") from None


def build_parser(prog: str, environ: Mapping[str, str]) -> argparse.ArgumentParser:
    server = environ.get(flags_cli.SERVER_ENV) or flags_cli.DEFAULT_SERVER
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write the three cleanup tickets of a release (remove the release flag, "
        "apply the NOT NULL contract, delete the legacy routing code) with owners and due dates "
        "computed from the flag inventory and the audit trail. Needs a viewer token in "
        f"{flags_cli.TOKEN_ENV}.",
        epilog="examples:\n"
        f"  {prog}\n"
        f"  {prog} --format json --out tickets/\n"
        f"  {prog} --flag payments.new-router.enabled --server flagd.payments.svc:8013 --tls",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--flag", metavar="KEY", help="the release flag (default: the only flag of kind release)"
    )
    parser.add_argument("--set", dest="flag_set", default="", metavar="ID", help="its flag set")
    parser.add_argument("--format", choices=("md", "json"), default="md", help="default md")
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="write files here (md: one per ticket; json: cleanup-tickets.json)",
    )
    parser.add_argument(
        "--today",
        type=_date,
        metavar="YYYY-MM-DD",
        help="judge overdue against this date (default: today, UTC)",
    )
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"the admin API (env {flags_cli.SERVER_ENV}; now {server})",
    )
    parser.add_argument("--tls", action="store_true", help="use TLS with the system's roots")
    parser.add_argument("--cacert", metavar="PATH", help="use TLS and trust this CA (PEM)")
    parser.add_argument(
        "--timeout", type=float, default=flags_cli.DEFAULT_TIMEOUT, metavar="SECONDS"
    )
    return parser


def write(plan: Plan, fmt: str, out: str | None) -> list[str]:
    """Print or write the tickets; returns the paths written."""
    if fmt == "json":
        text = json.dumps(plan_data(plan), indent=2, ensure_ascii=False) + "\n"
        files = {"cleanup-tickets.json": text}
    else:
        files = {file_name(i, t): ticket_markdown(t, plan) for i, t in enumerate(plan.tickets, 1)}
    if out is None:
        sys.stdout.write("\n---\n\n".join(files.values()) if fmt == "md" else text)
        return []
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in files.items():
        path = directory / name
        path.write_text(content, encoding="utf-8")
        written.append(str(path))
    return written


def main(
    argv: Sequence[str] | None = None,
    prog: str = PROG,
    *,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the command; 0 ok, 1 error (server, files), 2 usage."""
    env = os.environ if environ is None else environ
    parser = build_parser(prog, env)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    args.server = flags_cli.server_address(args.server, env)
    today = args.today or dt.datetime.now(dt.UTC).date()
    try:
        with flags_cli.connect(args, env) as client:
            inventory = read_inventory(client, args.flag_set)
            release = find_release(inventory, args.flag, args.flag_set)
            changes = read_changes(client, release)
            share = read_share(client, release)
        plan = plan_tickets(inventory, release, changes, today, share)
        for path in write(plan, args.format, args.out):
            print(f"wrote {path}", file=sys.stderr)
    except grpc.RpcError as exc:
        lines = flags_cli.explain(
            exc.code(),
            exc.details() or "",
            server=args.server,
            tls=bool(args.tls or args.cacert),
            token_set=bool(env.get(flags_cli.TOKEN_ENV, "").strip()),
        )
        print("\n".join(lines), file=sys.stderr)
        return 1
    except (LookupError, flags_cli.ClientError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    for ticket in plan.tickets:
        due = ticket.due.date.isoformat() if ticket.due.date else "not scheduled"
        print(f"{ticket.status:9} {due:13} {ticket.owner:18} {ticket.title}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
