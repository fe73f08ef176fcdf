"""`ripcord canary run|promote|abort|status`: the rollout driver and its operator commands.

`run` walks the Rollout's steps on the release flag (canary.rollout); the other commands talk
to the running driver through the JSON files in --state-dir (`status.json`, `requests/`), so
they work from any shell on the same machine, and `abort` still rolls the flag back when no
driver is running. Exit codes: `run` 0 when the flag reached 100%, 1 when the rollout was aborted
(or could not start), 2 for usage errors and manifests that cannot be driven; `promote` and
`abort` 0 when done, 1 otherwise; `status` 0, 1 when there is no status.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import json
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from canary.flag import AdminFlag, FlagError
from canary.machine import EXIT_ABORTED, EXIT_OK, EXIT_USAGE
from canary.notify import Notifier
from canary.plan import PlanError, load_plan
from canary.rollout import DEFAULT_FLAG, Driver, PrometheusAnalyses
from canary.statedir import DriverBusy, StateDir

__all__ = ["EXIT_OK", "build_parser", "main", "status_view"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROLLOUT = Path("deploy/k8s/payment-router.yaml")
DEFAULT_TEMPLATES = Path("deploy/k8s/analysis-template.yaml")
DEFAULT_STATE_DIR = Path(".state/canary")
SERVER_ENV = "FLAGD_ADMIN"
TOKEN_ENV = "RIPCORD_TOKEN"
USER_ENV = "RIPCORD_USER"
DEFAULT_SERVER = "localhost:8013"


# ============================================================================ parser


def _pause_scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _seconds(text: str) -> float:
    value = _pause_scale(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def _arg(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r}: use NAME=VALUE")
    return name, value


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help=f"where the driver and the operator commands meet (default {DEFAULT_STATE_DIR})",
    )


def _admin(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    parser.add_argument(
        "--server",
        metavar="HOST:PORT",
        help=f"the daemon's admin API (env {SERVER_ENV}; now "
        f"{environ.get(SERVER_ENV) or DEFAULT_SERVER}); token from {TOKEN_ENV}",
    )
    parser.add_argument("--tls", action="store_true", help="TLS with the system's roots")
    parser.add_argument("--cacert", metavar="PATH", help="TLS trusting this CA (PEM)")
    parser.add_argument("--flag-set", default="", metavar="ID", help="the flag's set")


def _user(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user",
        metavar="NAME",
        help=f"who you are, for the audit reason (env {USER_ENV}, else the login name)",
    )


def build_parser(prog: str, environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The `ripcord canary` parser."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Release the new engine by walking the Rollout's canary steps on the "
        "release flag, gated by the AnalysisTemplate against Prometheus.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        f"  RIPCORD_TOKEN=... {prog} run --notify-command 'pager-send'\n"
        f"  {prog} status\n"
        f"  {prog} promote\n"
        f"  RIPCORD_TOKEN=... {prog} abort",
    )
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = subs.add_parser(
        "run",
        help="walk the steps (setWeight, pause, analysis) on the release flag",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=textwrap.fill(
            "setWeight N sets the flag's split to on=N off=100-N through the admin API "
            "(reason 'canary step i/n: setWeight N', with expected_version so an operator's "
            "change is never overwritten); pause {duration} waits (times --pause-scale); "
            "pause {} waits for `promote`; an analysis that is Successful moves on, Failed or "
            "Error aborts (flag back to 0% with the failing metric, value and phase as the "
            "audit reason, then the page), Inconclusive pauses and pages. Ctrl-C or SIGTERM "
            "aborts too: the flag is never left part-way without its gates.",
            88,
        ),
        epilog="Analysis args, weakest first: the Rollout's own, the templates' "
        "ripcord/local-args annotation (--local-args), --prometheus, --arg NAME=VALUE.\n"
        "The page: --notify-command runs `sh -c CMD` with the event JSON on stdin and "
        "RIPCORD_EVENT, RIPCORD_REASON, RIPCORD_FLAG, RIPCORD_STEP, RIPCORD_WEIGHT, ... in "
        "its environment; --notify-webhook POSTs the same JSON (5 s timeout).",
    )
    run.add_argument(
        "--rollout", type=Path, metavar="FILE", help=f"the Rollout (default {DEFAULT_ROLLOUT})"
    )
    run.add_argument(
        "--templates",
        type=Path,
        action="append",
        metavar="FILE",
        help=f"AnalysisTemplates, repeatable (default {DEFAULT_TEMPLATES})",
    )
    run.add_argument("--flag", default=DEFAULT_FLAG, help=f"the release flag ({DEFAULT_FLAG})")
    _admin(run, environ)
    run.add_argument("--prometheus", metavar="URL", help="sets the arg prometheus-address")
    run.add_argument(
        "--arg",
        type=_arg,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an analysis arg, repeatable (wins over everything else)",
    )
    run.add_argument(
        "--local-args",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="use the templates' ripcord/local-args annotation (short windows, engine=new)",
    )
    run.add_argument(
        "--pause-scale",
        type=_pause_scale,
        default=1.0,
        metavar="F",
        help="multiply pause durations (0.1 for a rehearsal; 0 skips timed pauses)",
    )
    run.add_argument("--notify-command", metavar="CMD", help="page by running this command")
    run.add_argument("--notify-webhook", metavar="URL", help="page by POSTing to this URL")
    run.add_argument(
        "--plain", action="store_true", help="plain lines even on a terminal (no live view)"
    )
    _user(run)
    _common(run)

    promote = subs.add_parser(
        "promote",
        help="continue past a `pause: {}` or an Inconclusive analysis",
        description="Tell the running driver to go on: past an indefinite pause, or past an "
        "analysis that ended Inconclusive.",
    )
    promote.add_argument(
        "--wait", type=_seconds, default=15.0, metavar="S", help="wait for the driver (15)"
    )
    _user(promote)
    _common(promote)

    abort = subs.add_parser(
        "abort",
        help="roll the flag back to 0% now",
        description="The running driver aborts at once: the flag to 0% with the audit reason "
        "'canary aborted by USER ...', then the page. With no driver running (or one that does "
        "not answer within --wait), this command sets the flag to 0% itself.",
    )
    abort.add_argument(
        "--flag", help=f"the release flag (default: the last run's, else {DEFAULT_FLAG})"
    )
    _admin(abort, environ)
    abort.add_argument(
        "--wait", type=_seconds, default=20.0, metavar="S", help="wait for the driver (20)"
    )
    _user(abort)
    _common(abort)

    status = subs.add_parser(
        "status",
        help="step, weight, phase, each metric's last value and verdict",
        description="Show the rollout as the driver last wrote it (status.json).",
    )
    status.add_argument("--json", action="store_true", help="print status.json (plus liveness)")
    _common(status)
    return parser


# ============================================================================ rendering

_LEVEL_STYLE = {"info": "", "warning": "yellow", "error": "bold red", "success": "green"}
_PHASE_STYLE = {
    "Successful": "green",
    "Failed": "bold red",
    "Error": "bold red",
    "Inconclusive": "yellow",
    "Running": "cyan",
    "Pending": "dim",
    "Progressing": "cyan",
    "Paused": "yellow",
    "Completed": "bold green",
    "Aborted": "bold red",
}
_MARK = {"done": "✓", "current": "▶", "stopped": "✗", "pending": "·"}


def _clock(at: float) -> str:
    return dt.datetime.fromtimestamp(at).strftime("%H:%M:%S")


def _phase(text: str | None) -> Text:
    return Text(text or "-", style=_PHASE_STYLE.get(text or "", ""))


def metrics_table(status: Mapping[str, Any]) -> Table | None:
    """Each metric of the current (or last) analysis: phase, last value, verdict, progress."""
    analysis = status.get("analysis")
    if not analysis:
        return None
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, title_justify="left")
    table.title = Text.assemble("analysis ", _phase(analysis.get("phase")))
    for column in ("metric", "phase", "last value", "verdict", "measured"):
        table.add_column(column)
    for m in analysis.get("metrics") or []:
        wanted = "∞" if m.get("wanted") is None else str(m["wanted"])
        measured = f"{m.get('measured', 0)}/{wanted}"
        if m.get("errors"):
            measured += f", {m['errors']} errors in a row"
        name = m["name"] + (" (dry run)" if m.get("dry_run") else "")
        table.add_row(
            name,
            _phase(m.get("phase")),
            m.get("value") or "-",
            _phase(m.get("verdict")),
            measured,
        )
    return table


def _short(description: str) -> str:
    """`setWeight 5` -> `5%`, `analysis ...` -> `gate`, `pause (until promoted)` -> `pause`."""
    kind, _, rest = description.partition(" ")
    if kind == "setWeight":
        return f"{rest}%"
    if kind == "analysis":
        return "gate"
    return "pause" if rest.startswith("(") else f"pause {rest}"


def status_view(status: Mapping[str, Any], *, running: bool | None = None) -> RenderableType:
    """The rollout: header, steps, metrics, message."""
    phase = str(status.get("phase", "?"))
    head = Text.assemble(
        (f"{status.get('rollout', '?')}", "bold"),
        f" → {status.get('flag', '?')}   ",
        _phase(phase),
        f"   step {status.get('step')}/{status.get('steps')} {status.get('step_description', '')}",
        "   weight ",
        (f"{status.get('weight')}%", "bold"),
    )
    parts: list[RenderableType] = [head]
    if running is not None:
        updated = status.get("updated_at")
        age = f", updated {time.time() - float(updated):.0f}s ago" if updated else ""
        alive = "driver running" if running else "no driver running"
        parts.append(
            Text(f"{alive} (pid {status.get('pid')} on {status.get('host')}){age}", style="dim")
        )
    marks = Text()
    for i, step in enumerate(status.get("steps_list") or []):
        if i:
            marks.append("  ")
        mark = _MARK.get(step.get("status", ""), "?")
        style = {"current": "bold cyan", "stopped": "bold red", "done": "green"}.get(
            step.get("status", ""), "dim"
        )
        marks.append(f"{mark} {_short(str(step['description']))}", style=style)
    parts.append(marks)
    table = metrics_table(status)
    if table is not None:
        parts.append(table)
    if status.get("message"):
        parts.append(Text(str(status["message"]), style=_PHASE_STYLE.get(phase, "")))
    pause = status.get("pause")
    if pause and pause.get("until"):
        left = max(0.0, float(pause["until"]) - time.time())
        parts.append(Text(f"pause ends in {left:.0f}s", style="yellow"))
    return Group(*parts)


class PlainObserver:
    """One line per event, for logs and pipes."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def event(self, text: str, level: str = "info") -> None:
        """Print a timestamped line."""
        tag = {"warning": "WARN ", "error": "ERROR ", "success": ""}.get(level, "")
        print(f"{_clock(time.time())} {tag}{text}", file=self.stream, flush=True)

    def update(self, status: Mapping[str, Any]) -> None:
        """Nothing: the event lines already say it."""


class LiveObserver:
    """A live panel (rich) with the event lines scrolling above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = Live(console=console, refresh_per_second=4, transient=False)
        self._status: Mapping[str, Any] | None = None

    def __enter__(self) -> LiveObserver:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def event(self, text: str, level: str = "info") -> None:
        """A line above the panel."""
        line = Text(f"{_clock(time.time())} ", style="dim")
        line.append(text, style=_LEVEL_STYLE.get(level, ""))
        self.live.console.print(line, soft_wrap=True)

    def update(self, status: Mapping[str, Any]) -> None:
        """Redraw the panel."""
        self._status = status
        self.live.update(status_view(status), refresh=True)


# ============================================================================ commands


def _user_name(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    if args.user:
        return str(args.user)
    if environ.get(USER_ENV):
        return environ[USER_ENV]
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


def _existing(option: Path | None, default: Path) -> Path:
    """The option, else the default relative to the current directory, else to the repo."""
    if option is not None:
        return option
    return default if default.exists() else REPO / default


def _flag_client(
    args: argparse.Namespace, flag: str, server: str, environ: Mapping[str, str]
) -> AdminFlag:
    cacert = None
    if args.cacert:
        cacert = Path(args.cacert).read_bytes()
    return AdminFlag(
        server,
        flag,
        token=environ.get(TOKEN_ENV, "").strip(),
        flag_set=args.flag_set,
        tls=bool(args.tls),
        cacert=cacert,
    )


def cmd_run(
    args: argparse.Namespace, environ: Mapping[str, str], out: Console, err: Console
) -> int:
    """`run`."""
    rollout = _existing(args.rollout, DEFAULT_ROLLOUT)
    templates = args.templates or [_existing(None, DEFAULT_TEMPLATES)]
    try:
        plan = load_plan(
            rollout,
            templates,
            local_args=args.local_args,
            prometheus=args.prometheus,
            args=dict(args.arg),
        )
    except PlanError as e:
        err.print(Text(f"canary run: {e}"), soft_wrap=True)
        return EXIT_USAGE
    server = args.server or environ.get(SERVER_ENV) or DEFAULT_SERVER
    try:
        flag = _flag_client(args, args.flag, server, environ)
    except OSError as e:
        err.print(Text(f"canary run: --cacert: {e}"), soft_wrap=True)
        return EXIT_USAGE
    notifier = Notifier(args.notify_command, args.notify_webhook, environ=environ)
    live = out.is_terminal and not args.plain
    observer: PlainObserver | LiveObserver = LiveObserver(out) if live else PlainObserver(out.file)
    driver = Driver(
        plan,
        flag,
        PrometheusAnalyses(),
        StateDir(args.state_dir),
        notifier,
        flag_name=args.flag,
        server=server,
        user=_user_name(args, environ),
        pause_scale=args.pause_scale,
        observer=observer,
    )
    previous = _interrupt_on_sigterm()
    try:
        if isinstance(observer, LiveObserver):
            with observer:
                return driver.run()
        return driver.run()
    except DriverBusy as e:
        err.print(Text(f"canary run: {e}; see `ripcord canary status`"), soft_wrap=True)
        return EXIT_ABORTED
    finally:
        signal.signal(signal.SIGTERM, previous)
        flag.close()


def _interrupt_on_sigterm() -> Any:
    """SIGTERM behaves like Ctrl-C (the driver aborts); returns the previous handler."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (tests): leave it alone
        return signal.getsignal(signal.SIGTERM)


def _wait_for(
    state: StateDir, done: Callable[[Mapping[str, Any]], bool], timeout: float
) -> Mapping[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        doc = state.read_status()
        if doc is not None and done(doc):
            return doc
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def cmd_promote(
    args: argparse.Namespace, environ: Mapping[str, str], out: Console, err: Console
) -> int:
    """`promote`."""
    state = StateDir(args.state_dir)
    doc = state.read_status()
    if doc is None:
        err.print(Text(f"canary promote: no canary status in {state.path}"), soft_wrap=True)
        return 1
    if not state.driver_running():
        err.print(
            Text(
                f"canary promote: no driver is running in {state.path} "
                f"(last phase {doc.get('phase')})"
            ),
            soft_wrap=True,
        )
        return 1
    token = doc.get("pause_token")
    if doc.get("phase") != "Paused" or not token:
        err.print(
            Text(
                f"canary promote: nothing to promote, step {doc.get('step')}/{doc.get('steps')} "
                f"{doc.get('step_description')} is {doc.get('phase')}"
            ),
            soft_wrap=True,
        )
        return 1
    user = _user_name(args, environ)
    state.post("promote", user, str(token))
    index = doc.get("step_index")

    def moved(d: Mapping[str, Any]) -> bool:
        return d.get("step_index") != index or d.get("phase") != "Paused"

    after = _wait_for(state, moved, args.wait)
    if after is None:
        err.print(
            Text(
                f"canary promote: the driver did not move within {args.wait:g}s; "
                "see `ripcord canary status`"
            ),
            soft_wrap=True,
        )
        return 1
    out.print(
        Text(
            f"promoted by {user}: now step {after.get('step')}/{after.get('steps')} "
            f"{after.get('step_description')} ({after.get('phase')})"
        ),
        soft_wrap=True,
    )
    return 0


def cmd_abort(
    args: argparse.Namespace, environ: Mapping[str, str], out: Console, err: Console
) -> int:
    """`abort`."""
    state = StateDir(args.state_dir)
    doc = state.read_status() or {}
    user = _user_name(args, environ)
    if state.driver_running():
        state.post("abort", user)
        after = _wait_for(state, lambda d: d.get("phase") in ("Aborted", "Completed"), args.wait)
        if after is not None and after.get("phase") == "Aborted":
            out.print(Text(f"aborted: {after.get('message')}"), soft_wrap=True)
            return 0
        if after is not None:
            err.print(
                Text(
                    f"canary abort: too late, the rollout {after.get('phase')}: "
                    f"{after.get('message')}"
                ),
                soft_wrap=True,
            )
            return 1
        err.print(
            Text(
                f"canary abort: the driver did not answer within {args.wait:g}s; "
                "setting the flag to 0% directly"
            ),
            soft_wrap=True,
        )
        reason = f"canary aborted by {user} (the driver did not answer)"
    else:
        reason = f"canary aborted by {user} (no driver running)"
    flag_name = args.flag or doc.get("flag") or DEFAULT_FLAG
    server = args.server or environ.get(SERVER_ENV) or doc.get("server") or DEFAULT_SERVER
    try:
        flag = _flag_client(args, flag_name, server, environ)
    except OSError as e:
        err.print(Text(f"canary abort: --cacert: {e}"), soft_wrap=True)
        return EXIT_USAGE
    try:
        version = flag.set_weight(0, reason, None)
    except FlagError as e:
        err.print(Text(f"canary abort: could not set {flag_name} to 0%: {e}"), soft_wrap=True)
        return 1
    finally:
        flag.close()
    if doc and doc.get("phase") not in ("Aborted", "Completed"):
        doc = {**doc, "phase": "Aborted", "message": reason, "weight": 0, "updated_at": time.time()}
        state.write_status(doc)
    out.print(Text(f"aborted: {flag_name} on=0 (version {version}): {reason}"), soft_wrap=True)
    return 0


def cmd_status(
    args: argparse.Namespace, environ: Mapping[str, str], out: Console, err: Console
) -> int:
    """`status`."""
    state = StateDir(args.state_dir)
    doc = state.read_status()
    if doc is None:
        err.print(Text(f"canary status: no canary status in {state.path}"), soft_wrap=True)
        return 1
    running = state.driver_running()
    if args.json:
        out.out(
            json.dumps({**doc, "driver_running": running}, indent=2, sort_keys=True),
            highlight=False,
        )
        return 0
    out.print(status_view(doc, running=running))
    history = doc.get("history") or []
    for item in history[-8:]:
        line = Text(f"{_clock(float(item['at']))} ", style="dim")
        line.append(str(item["text"]), style=_LEVEL_STYLE.get(str(item.get("level")), ""))
        out.print(line, soft_wrap=True)
    return 0


COMMANDS = {"run": cmd_run, "promote": cmd_promote, "abort": cmd_abort, "status": cmd_status}


def main(
    argv: Sequence[str] | None = None,
    prog: str = "ripcord canary",
    *,
    environ: Mapping[str, str] | None = None,
    console: Console | None = None,
    err_console: Console | None = None,
) -> int:
    """Run `ripcord canary ARGV`; returns the exit status."""
    env = os.environ if environ is None else environ
    parser = build_parser(prog, env)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out = console or Console(highlight=False, emoji=False, markup=False)
    err = err_console or Console(stderr=True, highlight=False, emoji=False, markup=False)
    try:
        return COMMANDS[args.command](args, env, out, err)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
