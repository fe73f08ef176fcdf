"""`ripcord demo`: the release rehearsed on one machine, start to finish, in about two minutes.

Real processes on loopback: the flag daemon (a scratch copy of the payment flags, SQLite state),
the FX simulator, the payment router, Prometheus (Debian's, scraping both with the checked-in
config) and Locust sending payments the whole time. Then, in order:

1. the DCC experiment starts (50/50 for opted-in customers), shadow comparison is turned on
   (so the shadow-mismatch gate has data); the expand migration runs and the throttled
   backfill fills the ledger's 100,000 pre-migration rows in the background, gated by its flag;
2. `ripcord canary run` walks deploy/k8s/payment-router.yaml on the release flag with the gates
   of deploy/k8s/analysis-template.yaml on short windows; the operator promotes at `pause: {}`;
3. on-call opens the circuit under load: the time from the admin call's return until every
   payment goes to the legacy engine, measured from the client side;
4. v2 of the new engine, carrying a 300 ms latency regression, is deployed (a rolling restart
   of the router) and released again: the first gate catches it, the flag goes back to 0%, the
   page is sent and the reason is in the audit trail;
5. `ripcord experiment judge` reads exposures and conversions from Prometheus;
6. Locust stops and reconciles every acknowledged payment with the router's database.

It ends with a report (Markdown and a PNG): traffic, p99 latency and error rate per engine over
time, read back from Prometheus, with the steps, the rollback and the flip marked.
"""

from __future__ import annotations

import argparse
import csv
import json
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from canary.local_prometheus import PrometheusMissing
from flagd.process import REPO
from loadtest.book import PaymentBook
from loadtest.drill import FlipResult, Recorder, analyse_flip
from loadtest.mix import PaymentSpec
from loadtest.payer import Payer
from ripcord import report
from ripcord.demo_stack import Child, DemoFailed, Stack
from router.ledger import DEFAULT_PHASE_TTL

RELEASE = "payments.new-router.enabled"
CIRCUIT = "payments.new-router.circuit-open"
DCC = "payments.dynamic-currency.enabled"
BACKFILL = "payments.fx-backfill.enabled"
SHADOW = "payments.new-router.shadow"

# Locust: 10 closed-loop users at ~7 payments/s each. Failing test cards are left out: they are
# a real 1% of UNAVAILABLE answers, and at the 1% step the new engine sees ~10 payments per
# 10 s window, where one of them would fail the 1% error gate by chance alone.
LOAD = ["-u", "10", "-r", "10", "--pace", "7", "--failing-cards", "0"]
# The simulated customers: treatment (DCC offered) completes the checkout more often.
ACCEPT_RATES = "control=0.70,treatment=0.85"
# The production floor is 10,000 conversions per variant; a two-minute rehearsal gets a few
# hundred, so the judge runs with a lower floor (it prints the floor it used).
MIN_CONVERSIONS = 100
# The gates' short timing: 10 s rate windows, two checks 5 s apart after 5 s.
GATE_ARGS = ["--arg", "window=10s", "--arg", "interval=5s", "--arg", "count=2",
             "--arg", "initial-delay=5s"]  # fmt: skip
REGRESSION = "new:latency=300ms"
# 500 rows per batch, 50 ms between batches: the router's p99 stays far below the 200 ms gate
# on SQLite while the backfill runs beside the canary (bench/backfill.py measures the cost).
BACKFILL_PACE = ["--batch-size", "500", "--sleep-ms", "50"]
# Approving card, no DCC opt-in: probe payments never enter the experiment's counts.
PROBE_PAYMENT = PaymentSpec("probe-merchant", "probe-customer", 1000, "EUR", "tok_probe",
                            "424242", "4242", "EUR", dcc_opt_in=False, kind="approve")  # fmt: skip
SOAK_S = 15.0  # at 100% before the flip: the experiment gathers data, the plot shows steady state
MARKER = ".ripcord-demo"  # marks a work directory as the demo's own, safe to empty
DEFAULT_WORKDIR = REPO / ".state" / "demo"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _now() -> float:
    return time.time()


# ---------------------------------------------------------------------------- the story


@dataclass
class Rehearsal:
    """The story's steps; each appends to the report."""

    stack: Stack
    started: float = field(default_factory=_now)
    marks: list[report.Mark] = field(default_factory=list)
    summary: list[tuple[str, str, str]] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)
    locust: Child | None = None
    backfill: Child | None = None
    experiment_started: float = 0.0
    backfill_started: float = 0.0
    backfill_ended: float = 0.0

    def ripcord(self, *args: str) -> list[str]:
        """The `ripcord` command line (this interpreter)."""
        return [sys.executable, "-m", "ripcord.cli", *args]

    def run_cli(self, *args: str, show: bool = True) -> tuple[int, str]:
        """Run a `ripcord` command to completion; echo it and its output."""
        print(f"   $ ripcord {' '.join(args)}", flush=True)
        done = subprocess.run(
            self.ripcord(*args), cwd=REPO, env=self.stack.env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
        output = (done.stdout + done.stderr).rstrip()
        if show and output:
            print("\n".join(f"   │ {line}" for line in output.splitlines()), flush=True)
        return done.returncode, output

    # 1 -------------------------------------------------------------------------------------

    def start_load_and_migration(self) -> None:
        """The experiment at 50/50, Locust, the expand migration and the gated backfill."""
        s = self.stack
        _say("the DCC experiment starts (50/50 for opted-in customers); shadow comparison on")
        s.rollout(DCC, {"treatment": 50, "control": 50}, "DCC experiment: start at 50/50")
        # Both engines decide every payment (the other one without side effects), so the
        # shadow-mismatch gate judges real comparisons rather than passing on "no data".
        s.set_variant(SHADOW, "on", "rehearsal: shadow comparison for the canary gates")
        self.experiment_started = _now()
        _say("load: Locust, 10 users at ~7 payments/s each, for the whole rehearsal")
        cmd = [sys.executable, "-m", "locust", "-f", str(REPO / "loadtest" / "locustfile.py"),
               "--headless", *LOAD, "-t", "30m", "--stop-timeout", "5", "--no-drill",
               "--accept-rates", ACCEPT_RATES, "--host", f"127.0.0.1:{s.router_port}",
               "--router-db", s.db_url, "--csv", str(s.work / "locust"),
               "--only-summary"]  # fmt: skip
        print("   $ locust " + " ".join(cmd[4:]), flush=True)
        self.locust = s.spawn("locust", cmd)
        time.sleep(3)
        _say("expand migration now, the throttled backfill in the background (gated by its flag)")
        code, _ = self.run_cli("migrate", "expand", "--db", s.db_url, "--actor", "demo")
        if code != 0:
            raise DemoFailed(f"`ripcord migrate expand` exited {code}")
        self.marks.append(report.Mark(_now(), "expand", "event"))
        # The backfill must start after every writer dual-writes, or it chases rows written
        # without the snapshot (and gives up after a few passes, saying so): routers re-read
        # the schema phase every DEFAULT_PHASE_TTL seconds.
        wait = DEFAULT_PHASE_TTL + 1
        print(f"   waiting {wait:g} s for the router to see the new phase (it re-reads it "
              f"every {DEFAULT_PHASE_TTL:g} s) and dual-write", flush=True)  # fmt: skip
        time.sleep(wait)
        s.set_variant(BACKFILL, "on", "FX snapshot migration: start the backfill")
        self.marks.append(report.Mark(_now(), "backfill", "event"))
        self.backfill = s.spawn(
            "backfill",
            self.ripcord("migrate", "backfill", "--db", s.db_url, "--flagd",
                         f"127.0.0.1:{s.sync_port}", *BACKFILL_PACE, "--no-progress",
                         "--actor", "demo"),
        )  # fmt: skip
        self.backfill_started = _now()
        threading.Thread(target=self._backfill_done, daemon=True).start()
        print(f"   backfill running (log: {self.backfill.log})", flush=True)

    def _backfill_done(self) -> None:
        assert self.backfill is not None
        code = self.backfill.proc.wait()
        self.backfill_ended = _now()
        label = "backfill done" if code == 0 else f"backfill exited {code}"
        self.marks.append(report.Mark(self.backfill_ended, label, "event"))

    # 2 and 4 ---------------------------------------------------------------------------------

    def canary(self, number: int) -> dict[str, Any]:
        """`ripcord canary run` to its end, promoting at `pause: {}`; its final status."""
        s = self.stack
        state_dir = s.work / f"canary-{number}"
        pages = shlex.quote(str(s.work / "pages.jsonl"))
        args = ["canary", "run", "--server", s.admin_target, "--prometheus",
                s.prometheus.url if s.prometheus else "", *GATE_ARGS, "--pause-scale", "0",
                "--plain", "--state-dir", str(state_dir), "--user", "demo-release-bot",
                "--notify-command", f"cat >> {pages} && echo >> {pages}"]  # fmt: skip
        print(f"   $ ripcord {' '.join(args)}", flush=True)
        proc = subprocess.Popen(
            self.ripcord(*args), cwd=REPO, env=s.env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        reader = threading.Thread(target=_echo, args=(proc.stdout, "   │ "), daemon=True)
        reader.start()
        promoted: set[str] = set()
        deadline = time.monotonic() + 300
        while proc.poll() is None:
            status = _read_json(state_dir / "status.json")
            pause = (status or {}).get("pause") or {}
            token = (status or {}).get("pause_token")
            if status and status.get("phase") == "Paused" and token and token not in promoted:
                if pause.get("kind") == "promote":
                    promoted.add(token)
                    time.sleep(2)  # an operator glances at the dashboard first
                    self.marks.append(report.Mark(_now(), "promoted", "event"))
                    self.run_cli("canary", "promote", "--state-dir", str(state_dir),
                                 "--user", "demo-oncall")  # fmt: skip
                elif pause.get("kind") == "inconclusive":
                    promoted.add(token)
                    print("   the gate was inconclusive: the rehearsal aborts the run", flush=True)
                    self.run_cli("canary", "abort", "--state-dir", str(state_dir),
                                 "--server", s.admin_target, "--user", "demo-oncall")  # fmt: skip
            if time.monotonic() > deadline:
                proc.terminate()  # the driver aborts on SIGTERM: flag back to 0%
                proc.wait(30)
                raise DemoFailed(f"canary pass {number} did not finish in 300 s")
            time.sleep(0.25)
        reader.join(5)
        final = _read_json(state_dir / "status.json") or {}
        final["exit_code"] = proc.returncode
        return final

    def healthy_release(self) -> None:
        """Pass 1: every gate passes, the flag reaches 100%."""
        _say("pass 1: `ripcord canary run` walks 1% → 5% → 25% → 50% → pause → 100%, gated")
        t0 = _now()
        status = self.canary(1)
        took = _now() - t0
        if status["exit_code"] != 0 or status.get("weight") != 100:
            raise DemoFailed(
                f"pass 1 should reach 100% with a healthy engine: phase {status.get('phase')}, "
                f"weight {status.get('weight')}%, {status.get('message')}"
            )
        gates = sum(1 for step in status.get("steps_list", []) if "analysis" in step["description"])
        self.summary.append(("pass 1: healthy new engine", "reached 100%",
                             f"{gates} gates passed in {took:.0f} s"))  # fmt: skip
        self.sections.append(("Pass 1: the healthy release", _status_text(status)))

    def flip(self) -> None:
        """On-call opens the circuit under load; measured from the client side."""
        s = self.stack
        _say(f"the release soaks at 100% for {SOAK_S:.0f} s, then on-call opens the circuit")
        time.sleep(SOAK_S)
        probe = _Probe(s.router_port)
        probe.start()
        time.sleep(0.5)  # samples before the flip: proof that the new engine was serving
        t_call = _now()
        reply = s.set_variant(CIRCUIT, "on", "INC-4242: rehearsal, error spike on the new router")
        t_ack = _now()
        applied = s.wait_router_version(int(reply.version))
        deadline = time.monotonic() + 5
        result: FlipResult | None = None
        while time.monotonic() < deadline:
            time.sleep(0.2)
            result = analyse_flip(
                1, int(reply.version), t_call, t_ack, [probe.recorder.window(t_call - 1.0)],
                min_samples=20, quiet_s=0.1,
            )  # fmt: skip
            if result.converged:
                break
        probe.stop()
        if result is None or not result.converged or result.pre_new == 0:
            raise DemoFailed(f"the circuit flip did not converge: {result}")
        print(
            f"   committed as version {reply.version} by {reply.change.actor} in "
            f"{1000 * (t_ack - t_call):.1f} ms; every payment started "
            f"{result.latency_ms:.1f} ms after the call returned went to legacy "
            f"({result.samples_after} probe payments after the flip, {probe.sent} in all); "
            f"the router's /metrics showed the new version after {1000 * (applied - t_ack):.1f} ms",
            flush=True,
        )
        self.summary.append(("kill switch under load", "all traffic to legacy",
                             f"{result.latency_ms:.1f} ms from ack to legacy-only "
                             f"(commit {1000 * (t_ack - t_call):.1f} ms)"))  # fmt: skip
        self.sections.append((
            "Kill switch under load",
            f"`SetDefaultVariant({CIRCUIT} = on)` returned after {1000 * (t_ack - t_call):.1f} ms "
            f"(committed with its audit record, version {reply.version}). Probe payments "
            f"({probe.sent} from four threads, beside Locust's load) started from "
            f"{result.latency_ms:.1f} ms after the return on were all served by legacy; "
            f"{result.pre_new} probe payments in the second before the flip went to the new "
            f"engine. The router process reported the new flag version "
            f"{1000 * (applied - t_ack):.1f} ms after the return.",
        ))  # fmt: skip
        time.sleep(5)
        reply = s.set_variant(CIRCUIT, "off", "INC-4242: rehearsal over, closing the circuit")
        s.wait_router_version(int(reply.version))
        print("   circuit closed again after 5 s", flush=True)

    def regression(self) -> None:
        """Pass 2: v2 with a latency regression; the first gate catches it."""
        s = self.stack
        _say(f"v2 of the new engine ships a latency regression ({REGRESSION}): the release "
             "starts over at 0%, the router is redeployed (rolling, same port)")  # fmt: skip
        s.rollout(RELEASE, {"on": 0, "off": 100}, "v2 of the new engine: the release starts over")
        self.marks.append(report.Mark(_now(), "deploy v2 (+300 ms)", "event"))
        old = s.router
        s.router = s.start_router(faults=[REGRESSION])
        if old is not None:
            code = old.stop()
            print(f"   the v1 router process drained and exited {code}", flush=True)
        _say("pass 2: the same Rollout and gates against v2")
        status = self.canary(2)
        pages = [json.loads(line) for line in _lines(s.work / "pages.jsonl")]
        audit = [r for r in s.audit(self.started) if r.get("flag_key") == RELEASE]
        last = audit[-1] if audit else {}
        weight = report.on_weight(last.get("after"))
        if status["exit_code"] == 0 or weight != 0 or not pages:
            raise DemoFailed(
                f"pass 2 should be rolled back by a gate: exit {status['exit_code']}, weight "
                f"{weight}, {len(pages)} pages"
            )
        page = {
            k: v for k, v in pages[-1].items() if k in ("event", "flag", "flag_weight", "reason")
        }
        print(f"   the page (notify command, JSON on stdin): {json.dumps(page)}", flush=True)
        print(f"   audit: version {last.get('version')} by {last.get('actor')}: "
              f"{last.get('reason')}", flush=True)  # fmt: skip
        where = f"rolled back at step {status.get('step')}/{status.get('steps')}"
        reason = str(last.get("reason", ""))[:160]
        self.summary.append(("pass 2: +300 ms regression", where, reason))
        self.sections.append((
            "Pass 2: the regression caught",
            _status_text(status)
            + f"\n\nAudit record (version {last.get('version')}, actor {last.get('actor')}): "
            f"{last.get('reason')}\n\nPage sent (fields of the notification JSON): "
            f"`{json.dumps(page)}`",
        ))  # fmt: skip

    def judge(self) -> None:
        """The experiment's verdict from Prometheus."""
        s = self.stack
        assert s.prometheus is not None
        window = max(30, int(_now() - self.experiment_started) + 5)
        _say("the DCC experiment's verdict")
        code, output = self.run_cli(
            "experiment", "judge", "--prometheus", s.prometheus.url, "--window", f"{window}s",
            "--min-conversions", str(MIN_CONVERSIONS),
        )  # fmt: skip
        # 3 (insufficient data) and 4 (blocked by a sample-ratio mismatch) are verdicts the
        # judge is right to give; only 1 (Prometheus unusable) and 2 (usage) fail the demo.
        if code not in (0, 3, 4):
            raise DemoFailed(f"`ripcord experiment judge` exited {code}")
        lines = [ln.strip() for ln in output.splitlines()]
        verdict = lines[0].rpartition(": ")[2] if lines else "?"
        lift = next((ln for ln in lines if ln.startswith(("lift", "z-test"))), "")
        floor = f"floor {MIN_CONVERSIONS} conversions per variant (production 10,000)"
        self.summary.append(("DCC experiment", verdict, f"{' '.join(lift.split())}; {floor}"))
        self.sections.append(("The experiment verdict", f"```\n{output}\n```"))

    def finish(self) -> None:
        """Stop the load (Locust reconciles), the backfill's status, the report."""
        s = self.stack
        _say("Locust stops and reconciles every acknowledged payment with the router's database")
        if self.locust is not None:
            code = self.locust.stop(signal.SIGTERM, timeout=60)
            tail = self.locust.tail(40)
            money = [ln for ln in tail.splitlines() if "econcil" in ln or "payments" in ln]
            print("\n".join(f"   │ {ln}" for ln in money[-4:]), flush=True)
            self.summary.append(("load (Locust)", f"exit {code}", _locust_totals(s.work)))
            self.sections.append(("Load and reconciliation", f"```\n{tail}\n```"))
            if code != 0:
                raise DemoFailed(f"Locust exited {code}: payments lost or doubled?\n{tail}")
        _say("the migration: expand done, backfill status")
        outcome = "backfill still running: stopped (it resumes from its checkpoint)"
        if self.backfill is not None:
            if self.backfill.proc.poll() is None:
                self.backfill.stop(signal.SIGTERM)
            elif self.backfill.proc.returncode != 0:
                raise DemoFailed(f"the backfill exited {self.backfill.proc.returncode}:\n"
                                 f"{self.backfill.tail()}")  # fmt: skip
            else:
                done = self.backfill.tail(1).strip()
                took = self.backfill_ended - self.backfill_started
                during = self.router_p99(self.backfill_started, self.backfill_ended)
                after = self.router_p99(self.backfill_ended, self.backfill_ended + took)
                outcome = (
                    f"{done} in {took:.1f} s ({' '.join(BACKFILL_PACE)}); router p99 "
                    f"{during:.0f} ms during it, {after:.0f} ms in as long after it"
                )
            print(f"   {outcome}", flush=True)
        code, status = self.run_cli("migrate", "status", "--db", s.db_url)
        phase = next((ln for ln in status.splitlines() if ln.strip().startswith("phase")), "")
        state = " ".join(phase.split()[1:]).partition(" since ")[0] or f"exit {code}"
        self.summary.append(("expand + backfill", state, outcome))
        self.sections.append(("Migration", f"```\n{status}\n```"))

    def router_p99(self, start: float, end: float) -> float:
        """The router's Authorize p99 (ms, both engines) over [start, end], from Prometheus."""
        assert self.stack.prometheus is not None
        window = max(1, round(end - start))
        query = ("histogram_quantile(0.99, sum by (le) (increase(payments_request_duration_"
                 f'seconds_bucket{{job="payment-router"}}[{window}s])))')  # fmt: skip
        status, body = self.stack.prometheus.raw_query(query, time=f"{end:.3f}")
        result = json.loads(body)["data"]["result"] if status == 200 else []
        return 1000 * float(result[0]["value"][1]) if result else float("nan")

    def write_report(self) -> Path:
        """Markdown + PNG in the work directory."""
        s = self.stack
        assert s.prometheus is not None
        end = _now()
        time.sleep(1.5)  # the last scrape
        series = report.fetch_series(s.prometheus, self.started, end)
        marks = sorted(report.marks_from_audit(s.audit(self.started)) + self.marks,
                       key=lambda m: m.at)  # fmt: skip
        title = f"Ripcord release rehearsal, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
        image = report.plot(series, marks, self.started, s.work / "timeline.png", title)
        text = report.markdown(title, self.summary, image.name, self.sections, marks, self.started)
        path = s.work / "report.md"
        path.write_text(text)
        return path


class _Probe:
    """Probe payments from four threads through the load test's payment client, every answer
    recorded (which engine, when) for `loadtest.drill.analyse_flip`."""

    def __init__(self, port: int) -> None:
        self.recorder = Recorder()
        self._stop = threading.Event()
        token = secrets.token_hex(4)
        self._payers = [
            Payer(f"127.0.0.1:{port}", report=_ignore, book=PaymentBook(),
                  recorder=self.recorder, source=f"probe{n}", key_prefix=f"probe-{token}-{n}",
                  deadline_s=2.0, max_retries=0)
            for n in range(4)
        ]  # fmt: skip
        self._threads = [threading.Thread(target=self._run, args=(p,), daemon=True)
                         for p in self._payers]  # fmt: skip

    @property
    def sent(self) -> int:
        """Probe payments sent so far."""
        return sum(p.count for p in self._payers)

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def _run(self, payer: Payer) -> None:
        while not self._stop.is_set():
            payer.pay(PROBE_PAYMENT)
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        for p in self._payers:
            p.close()


def _ignore(**_: Any) -> None:
    """Probe calls are not load-test statistics."""


def _echo(stream: IO[str], prefix: str) -> None:
    for line in stream:
        print(prefix + line.rstrip(), flush=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or being replaced
    return doc if isinstance(doc, dict) else None


def _lines(path: Path) -> list[str]:
    return [ln for ln in path.read_text().splitlines() if ln.strip()] if path.exists() else []


def _status_text(status: dict[str, Any]) -> str:
    steps = " → ".join(f"{s['description']} [{s['status']}]" for s in status.get("steps_list", []))
    metrics = (status.get("analysis") or {}).get("metrics") or []
    rows = "\n".join(
        f"| {m['name']} | {m.get('phase')} | {m.get('value') or '-'} |" for m in metrics
    )
    text = (
        f"Final phase **{status.get('phase')}**, weight {status.get('weight')}%: "
        f"{status.get('message')}\n\nSteps: {steps}"
    )
    if rows:
        text += f"\n\nLast analysis:\n\n| metric | phase | last value |\n|---|---|---|\n{rows}"
    return text


def _locust_totals(work: Path) -> str:
    """Calls, failures and attempts retried with the same key, from Locust's stats CSV."""
    stats = work / "locust_stats.csv"
    if not stats.exists():
        return "no stats"
    with stats.open(newline="") as f:
        rows = list(csv.DictReader(f))
    total = next((r for r in rows if r.get("Name") == "Aggregated"), None)
    if total is None:
        return "no aggregate"
    retried = sum(int(r["Request Count"]) for r in rows if "[retried after" in r.get("Name", ""))
    return (
        f"{total['Request Count']} calls, {total['Failure Count']} failures, {retried} attempts "
        "retried with the same key (outcome unknown, e.g. racing the rolling deploy)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rehearsal; returns the exit code (0: every step behaved as a release must)."""
    parser = argparse.ArgumentParser(
        prog="ripcord demo", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--workdir", default=str(DEFAULT_WORKDIR),
        help="scratch directory: state, logs, report.md and timeline.png (a previous "
        "rehearsal's directory is emptied first; any other non-empty directory is refused)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    work = Path(args.workdir).resolve()
    ours = work == DEFAULT_WORKDIR or (work / MARKER).exists()
    if work.exists() and any(work.iterdir()) and not ours:
        print(f"ripcord demo: {work} is not empty and not a rehearsal's directory: "
              "choose another --workdir", file=sys.stderr)  # fmt: skip
        return 2
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / MARKER).write_text(
        "written by `ripcord demo`: this directory is emptied by the next run\n"
    )
    stack = Stack(work)
    rehearsal = Rehearsal(stack)
    try:
        _say("starting the flag daemon, the FX simulator, the router and Prometheus")
        stack.start()
        rehearsal.start_load_and_migration()
        rehearsal.healthy_release()
        rehearsal.flip()
        rehearsal.regression()
        rehearsal.judge()
        rehearsal.finish()
        path = rehearsal.write_report()
        _say("graceful stop (SIGTERM): streams get provider_shutdown, processes drain")
        code = stack.stop()
        print(f"   all processes exited with {code}")
        _say(f"report: {path} (plot: {path.parent / 'timeline.png'})")
        for phase, outcome, measured in rehearsal.summary:
            print(f"   {phase:28} {outcome:40.40} {measured}")
        return 0 if code == 0 else 1
    except PrometheusMissing as exc:
        print(f"ripcord demo: {exc}", file=sys.stderr)
        return 1
    except DemoFailed as exc:
        print(f"\nripcord demo: FAILED: {exc}\n(logs: {work / 'logs'})", file=sys.stderr)
        return 1
    finally:
        stack.kill()
