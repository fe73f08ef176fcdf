"""`ripcord flags`: the human client of the flag admin API (ripcord.admin.v1.FlagAdmin).

A person at 2 AM should not need grpcurl: `list`, `get`, `set`, `rollout`, `audit` and `watch`
call the daemon's admin API and print readable tables (or JSON with --json). The bearer token
comes from RIPCORD_TOKEN and is only ever sent as `authorization` metadata, never printed.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from rich.console import Console, RenderableType
from rich.text import Text

from ripcord import flags_render as render
from ripcord_pb.ripcord.admin.v1 import admin_pb2 as pb
from ripcord_pb.ripcord.admin.v1 import admin_pb2_grpc

SERVER_ENV = "FLAGD_ADMIN"
TOKEN_ENV = "RIPCORD_TOKEN"
DEFAULT_SERVER = "localhost:8013"
DEFAULT_TIMEOUT = 10.0
AUDIT_PAGE = 1000  # records per ListChanges call when reading the whole trail
ON_NAMES = ("on", "true", "enabled", "yes")
OFF_NAMES = ("off", "false", "disabled", "no")

PROG = "ripcord flags"


class UsageError(Exception):
    """A command line the client refuses before calling the server (exit 2)."""


class ClientError(Exception):
    """A failure that is not a gRPC status (unreadable CA file, stream ended) (exit 1)."""


# -- parser ---------------------------------------------------------------------------------------


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _state(text: str) -> str:
    value = text.upper()
    if value not in ("ENABLED", "DISABLED"):
        raise argparse.ArgumentTypeError(f"{text!r}: choose ENABLED or DISABLED")
    return value


def _connection_options(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """--server/--tls/--cacert/--json/--timeout, on the top parser and on every subcommand."""
    server = environ.get(SERVER_ENV) or DEFAULT_SERVER
    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"the daemon's admin API (env {SERVER_ENV}; now {server})",
    )
    group.add_argument(
        "--tls", action="store_true", help="use TLS with the system's root certificates"
    )
    group.add_argument(
        "--cacert", metavar="PATH", help="use TLS and trust this CA certificate (PEM)"
    )
    group.add_argument("--json", action="store_true", help="print JSON instead of tables")
    group.add_argument(
        "--timeout",
        type=_seconds,
        metavar="SECONDS",
        help=f"deadline of each call, except watch (default {DEFAULT_TIMEOUT:g})",
    )


def _sub(
    subs: Any, name: str, help_text: str, description: str, example: str, common: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subs.add_parser(
        name,
        help=help_text,
        description=textwrap.fill(description, 88),
        epilog="example:\n" + example,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    return parser


def build_parser(environ: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The `ripcord flags` argument parser."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read and change flags through the daemon's admin API "
        "(ripcord.admin.v1.FlagAdmin). Reads need a viewer token, set/rollout an operator "
        f"token; the token is read from {TOKEN_ENV} and sent as 'authorization: Bearer'.",
        epilog="examples:\n"
        "  ripcord flags list\n"
        "  RIPCORD_TOKEN=... ripcord flags set payments.new-router.circuit-open "
        "--variant on --reason 'INC-42: error spike'\n"
        "  ripcord flags --server flagd.prod:8013 --cacert ca.pem audit --limit 50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _connection_options(parser, env)
    # The same options after the subcommand; SUPPRESS keeps them from resetting the top ones.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    _connection_options(common, env)
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = _sub(
        subs,
        "list",
        "the flag inventory as a table",
        "List every flag: kind, owner, state, default variant, rollout, where its definition "
        "comes from (admin override or file) and its last change. Flags whose removal date "
        "has passed are marked STALE.",
        "  ripcord flags list --set payments",
        common,
    )
    p.add_argument("--set", dest="flag_set", default="", metavar="ID", help="only this flag set")

    p = _sub(
        subs,
        "get",
        "one flag: summary and definition",
        "Show one flag's summary, its last change and its full definition (flagd JSON).",
        "  ripcord flags get payments.new-router.circuit-open",
        common,
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("--set", dest="flag_set", default="", metavar="ID", help="the flag's set")

    p = _sub(
        subs,
        "set",
        "change a flag's default variant or state",
        "Set the default variant (the kill-switch lever) or the state of a flag. Prints the new "
        "configuration version and the audit record. With --expect-version the change is "
        "refused (ABORTED) if the flag changed since that version (see `get`: last change).",
        "  ripcord flags set payments.new-router.circuit-open --variant on \\\n"
        "      --reason 'INC-42: open the circuit'\n"
        "  ripcord flags set payments.retry-v2 --state DISABLED --reason 'rollback'",
        common,
    )
    p.add_argument("key", metavar="KEY")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--variant", metavar="V", help="new default variant")
    what.add_argument("--state", type=_state, metavar="ENABLED|DISABLED", help="new state")
    _mutation_options(p)

    p = _sub(
        subs,
        "rollout",
        "set the weights of a flag's fractional split",
        "Replace the weights of the flag's fractional split (percentages summing to 100). "
        "Shorthand: a single number on a flag split between two on/off variants means "
        "on=N off=100-N; the variants are taken from the flag's current split (boolean "
        "values, else the names on/off), and the command says what it chose.",
        "  ripcord flags rollout payments.new-router on=25 off=75 --reason 'canary step 2'\n"
        "  ripcord flags rollout payments.new-router 25 --reason 'canary step 2'",
        common,
    )
    p.add_argument("key", metavar="KEY")
    p.add_argument("split", nargs="+", metavar="VARIANT=PCT", help="weights, or one PCT")
    _mutation_options(p)

    p = _sub(
        subs,
        "audit",
        "the audit trail as a table",
        "List audit records (version, time, actor, action, flag, reason, what changed). "
        "Without --from: the latest --limit records; with --from N: up to --limit records "
        "from version N on. Versions are inclusive.",
        "  ripcord flags audit payments.new-router --limit 5\n"
        "  ripcord flags audit --from 120 --to 130",
        common,
    )
    p.add_argument("key", nargs="?", default="", metavar="KEY", help="only this flag")
    p.add_argument("--from", dest="from_version", type=_positive, metavar="N")
    p.add_argument("--to", dest="to_version", type=_positive, metavar="N")
    p.add_argument("--limit", type=_positive, default=20, metavar="N", help="default 20")

    p = _sub(
        subs,
        "watch",
        "print audit records as they happen",
        "Print one line per change as the daemon commits it, until Ctrl-C. With --after N "
        "(N >= 1), first replay the changes after version N.",
        "  ripcord flags watch payments.new-router\n  ripcord flags --json watch --after 120",
        common,
    )
    p.add_argument("key", nargs="?", default="", metavar="KEY", help="only this flag")
    p.add_argument("--after", type=_positive, default=None, metavar="N")
    return parser


def _mutation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", required=True, help="why (recorded in the audit trail)")
    parser.add_argument(
        "--expect-version",
        dest="expect_version",
        type=_non_negative,
        metavar="N",
        help="refuse unless the flag's last change is still version N",
    )
    parser.add_argument("--set", dest="flag_set", default="", metavar="ID", help="the flag's set")


# -- connection ---------------------------------------------------------------------------------


@dataclass
class Client:
    """A FlagAdmin stub with the caller's metadata and deadline."""

    stub: Any
    server: str
    metadata: tuple[tuple[str, str], ...]
    timeout: float

    def call(self, method: str, request: Any) -> Any:
        """A unary call with metadata and deadline."""
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)

    def stream(self, method: str, request: Any) -> Any:
        """A server-streaming call with metadata and no deadline."""
        return getattr(self.stub, method)(request, metadata=self.metadata)


def server_address(option: str | None, environ: Mapping[str, str]) -> str:
    """--server, else $FLAGD_ADMIN, else localhost:8013."""
    return option or environ.get(SERVER_ENV) or DEFAULT_SERVER


def _metadata(environ: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    token = environ.get(TOKEN_ENV, "").strip()
    return (("authorization", f"Bearer {token}"),) if token else ()


@contextmanager
def connect(args: argparse.Namespace, environ: Mapping[str, str]) -> Iterator[Client]:
    """A channel to args.server (TLS with --tls or --cacert), closed on exit."""
    if args.cacert:
        try:
            with open(args.cacert, "rb") as f:
                roots: bytes | None = f.read()
        except OSError as exc:
            raise ClientError(f"--cacert {args.cacert}: cannot read: {exc.strerror}") from exc
        channel = grpc.secure_channel(args.server, grpc.ssl_channel_credentials(roots))
    elif args.tls:
        channel = grpc.secure_channel(args.server, grpc.ssl_channel_credentials())
    else:
        channel = grpc.insecure_channel(args.server)
    with channel:
        yield Client(
            admin_pb2_grpc.FlagAdminStub(channel), args.server, _metadata(environ), args.timeout
        )


# -- errors -------------------------------------------------------------------------------------


def explain(
    code: grpc.StatusCode, details: str, *, server: str, tls: bool, token_set: bool
) -> list[str]:
    """`error: STATUS: details` plus a hint saying what to do about it."""
    lines = [f"error: {code.name}: {details}"]
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = (
            f"could not reach the flag admin API at {server}; point at another server with "
            f"--server HOST:PORT or {SERVER_ENV}=HOST:PORT"
        )
        if not tls:
            hint += " (add --tls or --cacert PATH if it serves TLS)"
        lines.append(hint)
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        lines.append(f"no answer from {server} in time; raise --timeout or check the daemon")
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        if token_set:
            lines.append(f"{server} did not accept the token in {TOKEN_ENV}; check it")
        else:
            lines.append(f"set {TOKEN_ENV} to a bearer token this daemon knows")
    elif code == grpc.StatusCode.PERMISSION_DENIED:
        needed = re.search(r"requires role (\w+)", details)
        role = f"role {needed.group(1)} or above" if needed else "a stronger role"
        lines.append(f"the token in {TOKEN_ENV} lacks the role this needs: use one with {role}")
    elif code == grpc.StatusCode.ABORTED:
        lines.append("the flag changed meanwhile: check it with `ripcord flags get KEY`, retry")
    elif code == grpc.StatusCode.UNIMPLEMENTED:
        lines.append(f"{server} does not serve ripcord.admin.v1.FlagAdmin; is it a ripcord daemon?")
    return lines


# -- commands -----------------------------------------------------------------------------------


@dataclass
class Out:
    """Where output goes: stdout for results, stderr for notes and errors."""

    console: Console
    err: Console
    json: bool

    def data(self, value: Any) -> None:
        """JSON on stdout, unwrapped and uncoloured."""
        self.console.out(render.dumps(value), highlight=False)

    def show(self, renderable: RenderableType) -> None:
        """A rich renderable on stdout."""
        self.console.print(renderable)

    def line(self, text: Text) -> None:
        """One line on stdout, never broken by rich (the terminal wraps it if need be)."""
        self.console.print(text, soft_wrap=True)

    def note(self, text: str) -> None:
        """A remark for the human: stdout normally, stderr with --json."""
        target = self.err if self.json else self.console
        target.print(Text(text), soft_wrap=True)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def cmd_list(client: Client, args: argparse.Namespace, out: Out) -> int:
    """ListFlags."""
    reply = client.call("ListFlags", pb.ListFlagsRequest(flag_set_id=args.flag_set))
    if out.json:
        out.data({"version": reply.version, "flags": [render.summary_data(f) for f in reply.flags]})
        return 0
    if not reply.flags:
        out.note(f"no flags{f' in flag set {args.flag_set!r}' if args.flag_set else ''}")
        return 0
    out.show(render.flags_table(list(reply.flags), _now()))
    stale = sum(1 for f in reply.flags if f.stale)
    summary = f"{len(reply.flags)} flags at configuration version {reply.version}"
    out.note(summary + (f"; {stale} STALE (removal date passed)" if stale else ""))
    return 0


def cmd_get(client: Client, args: argparse.Namespace, out: Out) -> int:
    """GetFlag."""
    reply = client.call("GetFlag", pb.GetFlagRequest(key=args.key, flag_set_id=args.flag_set))
    if out.json:
        out.data(
            {
                "flag": render.summary_data(reply.flag),
                "definition": render.struct_data(reply.definition),
                "version": reply.version,
            }
        )
        return 0
    out.show(render.flag_view(reply, _now()))
    return 0


def _report(out: Out, headline: str, reply: pb.MutationResponse) -> None:
    if out.json:
        out.data(render.mutation_data(reply))
        return
    out.show(Text(f"{headline}: now at version {reply.version}", style="bold"))
    out.show(render.record_fields(reply.change, _now()))


def cmd_set(client: Client, args: argparse.Namespace, out: Out) -> int:
    """SetDefaultVariant or SetFlagState."""
    if args.variant is not None:
        variant = pb.SetDefaultVariantRequest(
            key=args.key,
            flag_set_id=args.flag_set,
            variant=args.variant,
            reason=args.reason,
            expected_version=args.expect_version,
        )
        reply = client.call("SetDefaultVariant", variant)
        _report(out, f"{args.key}: default variant set to {args.variant}", reply)
    else:
        state = pb.SetFlagStateRequest(
            key=args.key,
            flag_set_id=args.flag_set,
            state=args.state,
            reason=args.reason,
            expected_version=args.expect_version,
        )
        reply = client.call("SetFlagState", state)
        _report(out, f"{args.key}: state set to {args.state}", reply)
    return 0


_PCT_RE = re.compile(r"(\d+)%?")


def _weight(text: str, what: str) -> int:
    match = _PCT_RE.fullmatch(text.strip())
    if not match:
        raise UsageError(f"{what}: {text!r} is not a whole percentage (like 25)")
    return int(match.group(1))


def parse_split(split: Sequence[str]) -> list[tuple[str, int]] | int:
    """`on=25 off=75` as [(on, 25), (off, 75)]; a single bare `25` as the int 25."""
    if len(split) == 1 and "=" not in split[0]:
        return _weight(split[0], "rollout")
    weights = []
    for item in split:
        variant, sep, pct = item.partition("=")
        if not sep or not variant:
            raise UsageError(f"{item!r}: give each weight as VARIANT=PCT (like on=25)")
        weights.append((variant, _weight(pct, item)))
    return weights


def on_off(flag: pb.FlagSummary, definition: Mapping[str, Any]) -> tuple[str, str, str] | str:
    """(on, off, how they were told apart) for a two-variant split, or why they cannot be."""
    variants = [w.variant for w in flag.rollout]
    if not variants:
        return f"{flag.key} has no fractional split to weigh"
    if len(variants) != 2 or variants[0] == variants[1]:
        return (
            f"a single percentage needs a split between two variants; {flag.key} splits "
            f"between {', '.join(variants)}"
        )
    values = definition.get("variants", {})
    a, b = variants
    if all(isinstance(values.get(v), bool) for v in variants) and values[a] != values[b]:
        on, off = (a, b) if values[a] is True else (b, a)
        return on, off, f"{on!r} serves true, {off!r} false"
    for on, off in ((a, b), (b, a)):
        if on.lower() in ON_NAMES and off.lower() in OFF_NAMES:
            return on, off, f"{on!r} is on and {off!r} off by name"
    return (
        f"cannot tell which of {a!r} and {b!r} is 'on' (neither true/false values nor on/off names)"
    )


def cmd_rollout(client: Client, args: argparse.Namespace, out: Out) -> int:
    """SetRollout, with the `KEY PCT` shorthand for on/off splits."""
    parsed = parse_split(args.split)
    if isinstance(parsed, int):
        if parsed > 100:
            raise UsageError(f"rollout: {parsed} is more than 100%")
        got = client.call("GetFlag", pb.GetFlagRequest(key=args.key, flag_set_id=args.flag_set))
        pair = on_off(got.flag, render.struct_data(got.definition))
        if isinstance(pair, str):
            raise UsageError(f"{pair}: give every weight as VARIANT=PCT")
        on, off, how = pair
        weights = [(on, parsed), (off, 100 - parsed)]
        # Keep the flag's own order so the audit diff compares like with like.
        order = [w.variant for w in got.flag.rollout]
        weights.sort(key=lambda w: order.index(w[0]))
        out.note(f"reading {parsed} as {on}={parsed} {off}={100 - parsed} ({how})")
    else:
        weights = parsed
    request = pb.SetRolloutRequest(
        key=args.key,
        flag_set_id=args.flag_set,
        weights=[pb.RolloutWeight(variant=v, weight=w) for v, w in weights],
        reason=args.reason,
        expected_version=args.expect_version,
    )
    reply = client.call("SetRollout", request)
    _report(out, f"{args.key}: rollout set to {render.rollout_text(weights)}", reply)
    return 0


def _latest_changes(client: Client, key: str, to_version: int, limit: int) -> list[Any]:
    """The last `limit` matching records (ListChanges pages forwards, so read them all)."""
    kept: collections.deque[Any] = collections.deque(maxlen=limit)
    cursor = 0
    while True:
        page = client.call(
            "ListChanges",
            pb.ListChangesRequest(
                flag_key=key, from_version=cursor, to_version=to_version, limit=AUDIT_PAGE
            ),
        ).changes
        kept.extend(page)
        if len(page) < AUDIT_PAGE:
            return list(kept)
        cursor = page[-1].version


def cmd_audit(client: Client, args: argparse.Namespace, out: Out) -> int:
    """ListChanges."""
    to_version = args.to_version or 0
    if args.from_version is not None and to_version and to_version < args.from_version:
        raise UsageError(f"--to {to_version} is before --from {args.from_version}")
    if args.from_version is None:
        records = _latest_changes(client, args.key, to_version, args.limit)
    else:
        request = pb.ListChangesRequest(
            flag_key=args.key,
            from_version=args.from_version - 1,  # the API's from_version is exclusive
            to_version=to_version,
            limit=args.limit,
        )
        records = list(client.call("ListChanges", request).changes)
    if out.json:
        out.data({"changes": [render.change_data(r) for r in records]})
        return 0
    if not records:
        out.note("no matching changes")
        return 0
    out.show(render.changes_table(records))
    return 0


def cmd_watch(client: Client, args: argparse.Namespace, out: Out) -> int:
    """WatchChanges until Ctrl-C."""
    after = args.after
    if after is None:
        # Start from the version the daemon serves now, so that nothing committed between
        # this point and the stream's start on the server is missed.
        after = client.call("ListFlags", pb.ListFlagsRequest()).version
    stream = client.stream(
        "WatchChanges", pb.WatchChangesRequest(after_version=after, flag_key=args.key)
    )
    what = f"changes to {args.key}" if args.key else "changes"
    out.err.print(
        Text(f"watching {what} on {client.server} after version {after} (Ctrl-C stops)"),
        soft_wrap=True,
    )
    try:
        for record in stream:
            if out.json:
                line = json.dumps(render.change_data(record), ensure_ascii=False)
                out.console.out(line, highlight=False)
            else:
                out.line(render.change_line(record))
    except KeyboardInterrupt:
        stream.cancel()
        return 0
    raise ClientError(f"{client.server} ended the stream (is the daemon shutting down?)")


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Out], int]] = {
    "list": cmd_list,
    "get": cmd_get,
    "set": cmd_set,
    "rollout": cmd_rollout,
    "audit": cmd_audit,
    "watch": cmd_watch,
}


# -- entry point --------------------------------------------------------------------------------


def _fail(err: Console, lines: Sequence[str]) -> None:
    for line in lines:
        err.print(Text(line), soft_wrap=True)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace | int:
    try:
        return parser.parse_args(list(argv))
    except SystemExit as exc:  # --help (0) or a usage error (2, already printed)
        return exc.code if isinstance(exc.code, int) else 2


def main(
    argv: Sequence[str],
    *,
    environ: Mapping[str, str] | None = None,
    console: Console | None = None,
    err_console: Console | None = None,
) -> int:
    """Run `ripcord flags ARGV`; returns the exit code (0 ok, 1 error, 2 usage)."""
    env = os.environ if environ is None else environ
    parser = build_parser(env)
    args = _parse(parser, argv)
    if isinstance(args, int):
        return args
    args.server = server_address(args.server, env)
    args.timeout = args.timeout or DEFAULT_TIMEOUT
    out = Out(
        # No markup: reasons, keys and server messages are printed exactly as they are.
        console or Console(highlight=False, emoji=False, markup=False),
        err_console or Console(stderr=True, highlight=False, emoji=False, markup=False),
        bool(args.json),
    )
    try:
        with connect(args, env) as client:
            return COMMANDS[args.command](client, args, out)
    except grpc.RpcError as exc:
        _fail(
            out.err,
            explain(
                exc.code(),
                exc.details() or "",
                server=args.server,
                tls=bool(args.tls or args.cacert),
                token_set=bool(_metadata(env)),
            ),
        )
        return 1
    except ClientError as exc:
        _fail(out.err, [f"error: {exc}"])
        return 1
    except UsageError as exc:
        _fail(out.err, [f"{PROG} {args.command}: error: {exc}"])
        return 2
    except KeyboardInterrupt:
        return 0 if args.command == "watch" else 130  # watch runs until Ctrl-C by design


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
