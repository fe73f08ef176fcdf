"""Rendering for `ripcord flags`: admin API messages as rich tables, lines and plain JSON data.

Everything here is pure (no I/O, no gRPC calls) so it can be tested without a daemon. Times are
shown in UTC with a relative age; token text never reaches this module.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.struct_pb2 import Struct
from rich import box
from rich.cells import cell_len
from rich.console import (
    Console,
    ConsoleOptions,
    Group,
    JustifyMethod,
    RenderableType,
    RenderResult,
)
from rich.json import JSON
from rich.table import Table
from rich.text import Text

from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb

ARROW = "→"
NONE = "-"
ADMIN_ORIGINS = frozenset({"admin", "ripcord-admin"})
_VALUE_WIDTH = 32  # longest compact JSON value shown in a diff before it is cut

# -- plain data ---------------------------------------------------------------------------------


def _tidy(value: Any) -> Any:
    """JSON data from a Struct with integral floats (Struct numbers are doubles) as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _tidy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_tidy(v) for v in value]
    return value


def struct_data(struct: Struct) -> dict[str, Any]:
    """A google.protobuf.Struct as a plain dict."""
    data: dict[str, Any] = _tidy(MessageToDict(struct))
    return data


def change_time(record: pb.ChangeRecord) -> dt.datetime | None:
    """When the change was made (UTC), or None when the record has no time."""
    if not record.HasField("at"):
        return None
    return record.at.ToDatetime(tzinfo=dt.UTC)


def change_data(record: pb.ChangeRecord) -> dict[str, Any]:
    """An audit record as JSON data (versions as numbers, time as ISO 8601 UTC)."""
    at = change_time(record)
    return {
        "version": record.version,
        "at": at.isoformat().replace("+00:00", "Z") if at else None,
        "actor": record.actor,
        "action": record.action,
        "flag_key": record.flag_key,
        "flag_set_id": record.flag_set_id,
        "reason": record.reason,
        "before": struct_data(record.before) if record.HasField("before") else None,
        "after": struct_data(record.after) if record.HasField("after") else None,
    }


def summary_data(flag: pb.FlagSummary) -> dict[str, Any]:
    """A flag summary as JSON data."""
    return {
        "key": flag.key,
        "flag_set_id": flag.flag_set_id,
        "kind": flag.kind,
        "owner": flag.owner,
        "description": flag.description,
        "removal": flag.removal,
        "stale": flag.stale,
        "state": flag.state,
        "default_variant": flag.default_variant or None,
        "variants": list(flag.variants),
        "rollout": [{"variant": w.variant, "weight": w.weight} for w in flag.rollout],
        "origin": flag.origin,
        "last_change": change_data(flag.last_change) if flag.HasField("last_change") else None,
    }


def mutation_data(reply: pb.MutationResponse) -> dict[str, Any]:
    """A mutation's answer as JSON data."""
    return {"version": reply.version, "change": change_data(reply.change)}


def dumps(data: Any) -> str:
    """Stable, indented JSON for --json output."""
    return json.dumps(data, indent=2, ensure_ascii=False)


# -- small formats ------------------------------------------------------------------------------


def utc(at: dt.datetime, *, seconds: bool = True) -> str:
    """`2026-03-01 14:02:11Z`."""
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ" if seconds else "%Y-%m-%d %H:%MZ")


def relative(at: dt.datetime, now: dt.datetime) -> str:
    """A short age: `just now`, `42s ago`, `5m ago`, `3h ago`, `12d ago` (or `in 5m`)."""
    delta = (now - at).total_seconds()
    ahead = delta < 0
    delta = abs(delta)
    if delta < 5:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")):
        if delta >= size:
            amount = f"{int(delta // size)}{unit}"
            return f"in {amount}" if ahead else f"{amount} ago"
    raise AssertionError("unreachable")  # pragma: no cover


def percent(part: int, total: int) -> str:
    """`25%`, `33.3%`."""
    value = round(100 * part / total, 1)
    return f"{value:g}%"


def rollout_text(weights: Sequence[tuple[str, int]]) -> str:
    """`on 25% / off 75%`; weights not summing to 100 are shown as shares of their total."""
    if not weights:
        return NONE
    total = sum(w for _, w in weights)
    if total <= 0:
        return " / ".join(f"{v} {w}" for v, w in weights)
    return " / ".join(f"{v} {percent(w, total)}" for v, w in weights)


def summary_rollout(flag: pb.FlagSummary) -> list[tuple[str, int]]:
    """The summary's rollout weights as (variant, weight) pairs."""
    return [(w.variant, w.weight) for w in flag.rollout]


def short_actor(actor: str) -> str:
    """`file:/long/path/flags.json` as `flags.json` (the action says `file`); others as is."""
    if actor.startswith("file:"):
        return PurePath(actor[5:]).name
    return actor


def origin_text(origin: str) -> str:
    """`admin` for an admin override or admin-created flag, else `file`."""
    if not origin:
        return NONE
    return "admin" if origin in ADMIN_ORIGINS else "file"


def flag_name(key: str, flag_set_id: str) -> str:
    """`key`, or `key (set payments)` when the flag set is known."""
    return f"{key} (set {flag_set_id})" if flag_set_id else key


# -- diffs --------------------------------------------------------------------------------------


def _fractional_nodes(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        if "fractional" in node:
            yield node
        for value in node.values():
            yield from _fractional_nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _fractional_nodes(item)


def rollout_of(definition: Mapping[str, Any] | None) -> list[tuple[str, int]] | None:
    """(variant, weight) pairs of a definition's single fractional split, else None."""
    if not definition:
        return None
    nodes = list(_fractional_nodes(definition.get("targeting")))
    if len(nodes) != 1 or not isinstance(nodes[0]["fractional"], list):
        return None
    weights = []
    for item in nodes[0]["fractional"]:
        if isinstance(item, list) and 1 <= len(item) <= 2 and isinstance(item[0], str):
            weight = item[1] if len(item) == 2 and isinstance(item[1], int | float) else 1
            weights.append((item[0], int(weight)))
    return weights


def _without_buckets(node: Any) -> Any:
    """The targeting with the fractional split's buckets blanked (to compare the rest)."""
    if isinstance(node, dict):
        if "fractional" in node and isinstance(node["fractional"], list):
            kept = [x for x in node["fractional"] if not isinstance(x, list)]
            return {**{k: _without_buckets(v) for k, v in node.items()}, "fractional": kept}
        return {k: _without_buckets(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_without_buckets(v) for v in node]
    return node


def compact(value: Any, width: int = _VALUE_WIDTH) -> str:
    """A value in one short line: strings bare, the rest as compact JSON, cut with `…`."""
    if value is _ABSENT:
        return "(none)"
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


_ABSENT: Any = object()


def _pair(name: str, before: Any, after: Any) -> str:
    return f"{name}: {compact(before)} {ARROW} {compact(after)}"


def diff_fields(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[str]:
    """Compact `field: before → after` lines for the changed top-level fields of a definition.

    Object-valued fields (variants, metadata) are compared one level down; a changed
    fractional split is shown as its rollout.
    """
    if before is None and after is None:
        return []
    if before is None:
        return ["created"]
    if after is None:
        return ["deleted"]
    lines: list[str] = []
    for field in [*before, *(k for k in after if k not in before)]:
        old, new = before.get(field, _ABSENT), after.get(field, _ABSENT)
        if old == new:
            continue
        if field == "targeting":
            old_split, new_split = rollout_of(before), rollout_of(after)
            if old_split is not None and new_split is not None and old_split != new_split:
                lines.append(
                    f"rollout: {rollout_text(old_split)} {ARROW} {rollout_text(new_split)}"
                )
                if _without_buckets(old) == _without_buckets(new):
                    continue
        if isinstance(old, dict) and isinstance(new, dict):
            for sub in [*old, *(k for k in new if k not in old)]:
                o, n = old.get(sub, _ABSENT), new.get(sub, _ABSENT)
                if o != n:
                    lines.append(_pair(f"{field}.{sub}", o, n))
            continue
        lines.append(_pair(field, old, new))
    return lines


def change_diff(record: pb.ChangeRecord) -> list[str]:
    """The record's before→after diff lines."""
    before = struct_data(record.before) if record.HasField("before") else None
    after = struct_data(record.after) if record.HasField("after") else None
    if before is None and after is None:
        return []
    return diff_fields(before, after) or ["no definition change"]


# -- fitted tables ------------------------------------------------------------------------------

_BREAK_RE = re.compile(r"[^.\-_/:]+[.\-_/:]*|[.\-_/:]+")


def wrap_name(text: str, width: int) -> str:
    """A flag key or action wrapped after `.`, `-`, `_`, `/` or `:` to lines of at most width."""
    lines: list[str] = []
    line = ""
    for piece in _BREAK_RE.findall(text):
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
        while len(line) > width:
            lines.append(line[:width])
            line = line[width:]
    lines.append(line)
    return "\n".join(lines)


def wrap_pieces(text: str, sep: str, width: int) -> str:
    """`a 1% / b 2% / c 3%` broken only between pieces (a broken line keeps its ` /`)."""
    pieces = text.split(sep)
    tail = sep.rstrip()
    lines: list[str] = []
    line: list[str] = []
    for n, piece in enumerate(pieces):
        candidate = sep.join([*line, piece]) + ("" if n == len(pieces) - 1 else tail)
        if line and len(candidate) > width:
            broken = sep.join(line)
            lines.append(broken + tail if len(broken + tail) <= width else broken)
            line = []
        line.append(piece)
    lines.append(sep.join(line))
    return "\n".join(lines)


@dataclass(frozen=True)
class Col:
    """A column of a FittedTable: widths it shrinks to, in two stages, when space is short."""

    header: str
    comfortable: int
    floor: int
    names: bool = False  # wrap at punctuation (flag keys, actions) instead of at spaces
    pieces: str = ""  # wrap only at this separator (rollout's " / ")
    justify: JustifyMethod = "left"

    def wrap(self, cell: str | Text, width: int) -> str | Text:
        """The cell with line breaks chosen for this column."""
        if isinstance(cell, Text):
            first, *rest = cell.split("\n")
            text = Text(str(self.wrap(first.plain, width)), style=first.style or "")
            for extra in rest:
                text.append("\n")
                text.append_text(extra)
            return text
        if self.names:
            return wrap_name(cell, width)
        if self.pieces:
            return wrap_pieces(cell, self.pieces, width)
        return cell


def fit_widths(
    natural: Sequence[int], stages: Sequence[Sequence[int]], order: Sequence[int], room: int
) -> list[int]:
    """Shrink columns (in `order`) to each stage's widths in turn until they fit in `room`."""
    widths = list(natural)
    for stage in stages:
        for i in order:
            excess = sum(widths) - room
            if excess <= 0:
                return widths
            if widths[i] > stage[i]:
                widths[i] = max(stage[i], widths[i] - excess)
    return widths


def _text(cell: str | Text) -> Text:
    """Cells as Text, so `[...]` in a reason or key is never read as rich markup."""
    return cell if isinstance(cell, Text) else Text(cell)


def _cell_width(cell: str | Text) -> int:
    plain = cell.plain if isinstance(cell, Text) else cell
    return max((cell_len(line) for line in plain.split("\n")), default=0)


class FittedTable:
    """A table laid out for the console's width when it is printed.

    Rich narrows the widest columns first, which folds flag keys mid-word; this shrinks the
    least important columns first (`order`), breaks keys at their punctuation and rollouts
    between variants, then hands the room a column did not need to the others.
    """

    GAP = 2  # one padding space and the (blank) rule between columns

    def __init__(
        self, cols: Sequence[Col], rows: Sequence[Sequence[str | Text]], order: Sequence[int]
    ):
        self.cols = list(cols)
        self.rows = [list(r) for r in rows]
        self.order = list(order)

    def _widths(self, width: int) -> list[int]:
        natural = [
            max([len(c.header), *(_cell_width(r[i]) for r in self.rows)])
            for i, c in enumerate(self.cols)
        ]
        room = width - self.GAP * (len(self.cols) - 1)
        stages = [[c.comfortable for c in self.cols], [c.floor for c in self.cols]]
        widths = fit_widths(natural, stages, self.order, room)
        # Names wrap at punctuation and rollouts between variants, so a column may need less
        # than it got: hand the rest back (last-shrunk first, name columns last).
        regrow = [i for i in reversed(self.order) if not self.cols[i].names]
        regrow += [i for i in reversed(self.order) if self.cols[i].names]
        for _ in range(3):
            used = [
                min(w, max([len(c.header), *(_cell_width(c.wrap(r[i], w)) for r in self.rows)]))
                for i, (c, w) in enumerate(zip(self.cols, widths, strict=True))
            ]
            spare = room - sum(used)
            widths = used
            for i in regrow:
                grow = min(spare, natural[i] - widths[i])
                if grow > 0:
                    widths[i] += grow
                    spare -= grow
            if spare == room - sum(used):
                break
        return widths

    def table(self, width: int) -> Table:
        """The rich Table for a console `width` columns wide."""
        widths = self._widths(width)
        table = Table(
            box=box.SIMPLE_HEAD,
            header_style="bold",
            pad_edge=False,
            show_edge=False,
            show_lines=True,  # a blank line between rows: they are several lines tall
            padding=(0, 1, 0, 0),
        )
        for col, w in zip(self.cols, widths, strict=True):
            table.add_column(col.header, width=w, overflow="fold", justify=col.justify)
        for row in self.rows:
            table.add_row(
                *(_text(c.wrap(cell, w)) for c, w, cell in zip(self.cols, widths, row, strict=True))
            )
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Render at the width on offer."""
        yield self.table(options.max_width)


# -- views --------------------------------------------------------------------------------------


def _key_cell(flag: pb.FlagSummary) -> Text:
    text = Text(flag.key, style="bold")
    if flag.stale:
        text.append("\n")
        text.append("STALE", style="bold reverse red")
        text.append(f" {flag.removal}" if flag.removal else "", style="red")
    return text


def _state_cell(state: str) -> Text:
    return Text(state or NONE, style="green" if state == "ENABLED" else "yellow")


def last_change_text(record: pb.ChangeRecord, now: dt.datetime) -> str:
    """`v12 5m ago`, `alice`, `2026-03-01 14:02Z` on three lines."""
    at = change_time(record)
    age, when = (relative(at, now), utc(at, seconds=False)) if at else (NONE, NONE)
    return f"v{record.version} {age}\n{short_actor(record.actor)}\n{when}"


def flags_table(flags: Sequence[pb.FlagSummary], now: dt.datetime) -> FittedTable:
    """The flag inventory: one row per flag."""
    cols = [
        Col("key", 24, 12, names=True),
        Col("kind", 10, 6),
        Col("owner", 10, 6),
        Col("state", 8, 8),
        Col("default", 8, 7),
        Col("rollout", 16, 9, pieces=" / "),
        Col("origin", 6, 6),
        Col("last change", 12, 11),
    ]
    order = [7, 5, 2, 1, 4, 0]  # last change, rollout, owner, kind, default, key
    rows: list[list[str | Text]] = []
    for flag in flags:
        rows.append(
            [
                _key_cell(flag),
                flag.kind or NONE,
                flag.owner or NONE,
                _state_cell(flag.state),
                flag.default_variant or NONE,
                rollout_text(summary_rollout(flag)),
                origin_text(flag.origin),
                last_change_text(flag.last_change, now) if flag.HasField("last_change") else NONE,
            ]
        )
    if len({f.flag_set_id for f in flags}) > 1:
        cols.insert(0, Col("set", 10, 6, names=True))
        order = [0, *(i + 1 for i in order)]
        for row, flag in zip(rows, flags, strict=True):
            row.insert(0, flag.flag_set_id or NONE)
    return FittedTable(cols, rows, order)


def _fields(rows: Iterable[tuple[str, RenderableType]]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for name, value in rows:
        grid.add_row(name, _text(value) if isinstance(value, str) else value)
    return grid


def record_fields(record: pb.ChangeRecord, now: dt.datetime) -> Table:
    """One audit record as a field grid, diff included."""
    at = change_time(record)
    return _fields(
        [
            ("version", str(record.version)),
            ("at", f"{utc(at)} ({relative(at, now)})" if at else NONE),
            ("actor", record.actor or NONE),
            ("action", record.action or NONE),
            ("flag", flag_name(record.flag_key, record.flag_set_id)),
            ("reason", record.reason or NONE),
            ("changed", "\n".join(change_diff(record)) or NONE),
        ]
    )


def flag_view(reply: pb.GetFlagResponse, now: dt.datetime) -> Group:
    """`get`: the summary, the last change and the definition as pretty JSON."""
    flag = reply.flag
    removal: RenderableType = flag.removal or NONE
    if flag.stale:
        removal = Text.assemble(
            (flag.removal, ""), "  ", ("STALE", "bold reverse red"), (" (date passed)", "red")
        )
    origin = flag.origin or NONE
    if origin not in ADMIN_ORIGINS and origin != NONE:
        origin = f"file {origin}"
    rows: list[tuple[str, RenderableType]] = [
        ("key", Text(flag.key, style="bold")),
        ("flag set", flag.flag_set_id or NONE),
        ("kind", flag.kind or NONE),
        ("owner", flag.owner or NONE),
        ("description", flag.description or NONE),
        ("removal", removal),
        ("state", _state_cell(flag.state)),
        ("default", flag.default_variant or NONE),
        ("variants", ", ".join(flag.variants) or NONE),
        ("rollout", rollout_text(summary_rollout(flag))),
        ("origin", origin),
    ]
    if flag.HasField("last_change"):
        last = flag.last_change
        at = change_time(last)
        when = f"{utc(at)} ({relative(at, now)})" if at else NONE
        rows.append(("last change", f"v{last.version} {last.action} by {last.actor}, {when}"))
        if last.reason:
            rows.append(("  reason", last.reason))
    rows.append(("config version", str(reply.version)))
    definition = ordered_definition(struct_data(reply.definition))
    return Group(_fields(rows), Text("\ndefinition:", style="bold"), JSON.from_data(definition))


_DEFINITION_ORDER = ("state", "variants", "defaultVariant", "targeting", "metadata")


def ordered_definition(definition: Mapping[str, Any]) -> dict[str, Any]:
    """A flag definition with its fields in the order people read them (Struct has none)."""
    first = {k: definition[k] for k in _DEFINITION_ORDER if k in definition}
    return {**first, **{k: v for k, v in definition.items() if k not in first}}


def changes_table(records: Sequence[pb.ChangeRecord]) -> FittedTable:
    """The audit trail: one row per record, oldest first."""
    cols = [
        Col("ver", 3, 3, justify="right"),
        Col("time (UTC)", 10, 10),
        Col("actor", 14, 10),
        Col("action", 19, 12, names=True),
        Col("flag", 24, 14, names=True),
        Col("reason", 24, 14),
        Col("what changed", 36, 20),
    ]
    order = [1, 2, 3, 4, 5, 6]  # time, actor, action, flag, reason, what changed
    rows: list[list[str | Text]] = []
    for record in records:
        at = change_time(record)
        rows.append(
            [
                str(record.version),
                utc(at) if at else NONE,
                short_actor(record.actor) or NONE,
                record.action or NONE,
                record.flag_key or NONE,
                record.reason or NONE,
                "\n".join(change_diff(record)) or NONE,
            ]
        )
    return FittedTable(cols, rows, order)


def change_line(record: pb.ChangeRecord) -> Text:
    """One audit record on one line, for `watch`."""
    at = change_time(record)
    text = Text()
    text.append(f"v{record.version}", style="bold")
    text.append(f" {utc(at) if at else NONE} {short_actor(record.actor)} ")
    text.append(record.action, style="cyan")
    text.append(f" {flag_name(record.flag_key, record.flag_set_id)}")
    if record.reason:
        text.append(f' "{record.reason}"')
    diff = change_diff(record)
    if diff:
        text.append(": " + "; ".join(diff))
    return text
